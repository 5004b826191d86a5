//! The default answer: a deterministic, offline stand-in for a sales assistant model.
//!
//! It reads product lines from the system, developer and user messages:
//!
//! ```text
//! - <name> (SKU <sku>): <price> [<currency>][, stock <n>]
//! ```
//!
//! and the customer's last message (the last user message without its product lines). Then:
//! - the customer asks for a human ("atendente", "human", "pessoa", …) → exactly
//!   [`HANDOFF_MARKER`];
//! - a product shares words with the message (or its SKU is in it) → that product's name,
//!   price and stock;
//! - otherwise up to three products, or a polite generic answer when the prompt lists none.
//!
//! Asked for a structure (`response_format` of type `json_schema`), it answers the worker's
//! `{text, skus, quick_replies, handoff}` instead ([`structured`]): the same text, the matched
//! product's SKU for a card (the three listed when none matched), quick replies naming two other
//! products with their SKUs, `handoff: true` for a person. [`Misbehave`] makes it break the
//! structure or lie about prices and SKUs, on request.
//!
//! Instructions that mention those keywords belong in the system message: only the customer's
//! message is searched for them.

use igsales_schema::products::fold;

use super::HANDOFF_MARKER;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub name: String,
    pub sku: String,
    /// As written, currency included when there is one: `89.90 BRL`, `R$ 49,90`, `35`.
    pub price: String,
    pub stock: Option<u32>,
}

/// Words that ask for a person, folded (lowercase, no accents, no plural `s`).
const HANDOFF_WORDS: &[&str] = &[
    "human",
    "humano",
    "humana",
    "person",
    "pessoa",
    "persona",
    "agent",
    "agente",
    "atendente",
    "attendant",
];

/// Too common to say which product is meant.
const STOPWORDS: &[&str] = &[
    "the", "and", "for", "with", "com", "para", "por", "uma", "del", "los", "las", "con", "sem",
];

/// The answer to a conversation given as `(role, content)` pairs.
pub fn respond(messages: &[(String, String)]) -> String {
    let (products, customer) = read(messages);
    answer(&products, &customer)
}

/// What the responder makes of the customer's message.
enum Pick<'a> {
    Handoff,
    Best(&'a Product),
    /// No product matched: up to three to show.
    Some(Vec<&'a Product>),
    Nothing,
}

fn pick<'a>(products: &'a [Product], customer: &str) -> Pick<'a> {
    let said = words(customer);
    if said.iter().any(|w| HANDOFF_WORDS.contains(&w.as_str())) {
        return Pick::Handoff;
    }
    let folded = fold(customer);
    let best = products
        .iter()
        .map(|p| (score(p, &said, &folded), p))
        .filter(|(s, _)| *s > 0)
        // The first listed wins a tie: `max_by_key` keeps the last, so compare reversed.
        .rev()
        .max_by_key(|(s, _)| *s)
        .map(|(_, p)| p);
    match best {
        Some(p) => Pick::Best(p),
        None if products.is_empty() => Pick::Nothing,
        None => Pick::Some(products.iter().take(3).collect()),
    }
}

fn best_text(p: &Product, price: &str) -> String {
    match p.stock {
        Some(0) => format!(
            "{} costs {price}, but it is out of stock right now. Can I suggest something else?",
            p.name
        ),
        Some(n) => format!(
            "Good news! {} costs {price} and we have {n} in stock. Would you like to order it?",
            p.name
        ),
        None => format!("{} costs {price}. Would you like to order it?", p.name),
    }
}

const GENERIC: &str = "Thanks for your message! How can I help you today?";

fn list_text(listed: &[&Product]) -> String {
    let listed: Vec<String> = listed
        .iter()
        .map(|p| format!("{} ({})", p.name, p.price))
        .collect();
    format!(
        "Thanks for your message! Here is some of what we have: {}. Which one are you \
         interested in?",
        listed.join(", ")
    )
}

/// The answer to `customer` given the catalog `products`.
pub fn answer(products: &[Product], customer: &str) -> String {
    match pick(products, customer) {
        Pick::Handoff => HANDOFF_MARKER.to_owned(),
        Pick::Best(p) => best_text(p, &p.price),
        Pick::Some(listed) => list_text(&listed),
        Pick::Nothing => GENERIC.to_owned(),
    }
}

/// How a structured answer goes wrong, on request (see
/// [`FakeLlm::misbehave_next`](super::FakeLlm::misbehave_next)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehave {
    /// JSON cut short: not the schema.
    BrokenJson,
    /// The product's price, plus seven: a price the catalog does not have.
    InventPrice,
    /// A SKU that is in no catalog, chosen besides the real one.
    UnknownSku,
    /// The named product with the price of another product in the prompt.
    OtherPrice,
}

/// A SKU no catalog has.
pub const UNKNOWN_SKU: &str = "NO-SUCH-SKU-999";

/// `price` (as written in the prompt) with its number raised by seven.
fn invented(price: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    let mut chars = price.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() && !done {
            let mut number = String::from(c);
            while let Some(n) = chars
                .peek()
                .copied()
                .filter(|n| n.is_ascii_digit() || *n == '.' || *n == ',')
            {
                number.push(n);
                chars.next();
            }
            let decimal = number.replace(',', ".");
            let value: f64 = decimal.parse().unwrap_or(0.0) + 7.0;
            let written = format!("{value:.2}");
            out.push_str(&if number.contains(',') {
                written.replace('.', ",")
            } else {
                written
            });
            done = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// The structured answer (`{text, skus, quick_replies, handoff}`, as the worker's response
/// format asks) to `customer`: the best match chosen for a card (or up to three when none
/// matched), quick replies about two other products; `choose` off chooses no SKUs.
pub fn structured(
    products: &[Product],
    customer: &str,
    misbehave: Option<Misbehave>,
    choose: bool,
) -> String {
    let (text, skus, others): (String, Vec<&str>, Vec<&Product>) = match pick(products, customer) {
        Pick::Handoff => {
            return serde_json::json!({"text": "", "skus": [], "quick_replies": [], "handoff": true})
                .to_string();
        }
        Pick::Best(p) => {
            let price = match misbehave {
                Some(Misbehave::InventPrice) => invented(&p.price),
                Some(Misbehave::OtherPrice) => products
                    .iter()
                    .find(|o| o.sku != p.sku && o.price != p.price)
                    .map_or_else(|| invented(&p.price), |o| o.price.clone()),
                _ => p.price.clone(),
            };
            let others = products.iter().filter(|o| o.sku != p.sku).take(2).collect();
            (best_text(p, &price), vec![p.sku.as_str()], others)
        }
        Pick::Some(listed) => {
            let text = list_text(&listed);
            (
                text,
                listed.iter().map(|p| p.sku.as_str()).collect(),
                Vec::new(),
            )
        }
        Pick::Nothing => (GENERIC.to_owned(), Vec::new(), Vec::new()),
    };
    let mut skus: Vec<String> = if choose {
        skus.into_iter().map(str::to_owned).collect()
    } else {
        Vec::new()
    };
    if misbehave == Some(Misbehave::UnknownSku) {
        skus.push(UNKNOWN_SKU.to_owned());
    }
    let quick: Vec<serde_json::Value> = others
        .iter()
        .map(|o| serde_json::json!({"title": o.name, "sku": o.sku}))
        .collect();
    let body = serde_json::json!({
        "text": text,
        "skus": skus,
        "quick_replies": quick,
        "handoff": false,
    })
    .to_string();
    if misbehave == Some(Misbehave::BrokenJson) {
        // Cut inside the SKU list: no longer JSON.
        let cut = body.find("\"skus\"").unwrap_or(body.len() / 2);
        return body[..cut + 8].to_owned();
    }
    body
}

/// The customer's message and the products of a conversation given as `(role, content)`. A
/// product line right after a line saying the customer "tapped" something is what the tap was
/// about: it comes first, and it is what the customer means.
pub fn read(messages: &[(String, String)]) -> (Vec<Product>, String) {
    let mut products: Vec<Product> = Vec::new();
    let mut tapped: Option<Product> = None;
    for (_, content) in messages
        .iter()
        .filter(|(role, _)| matches!(role.as_str(), "system" | "developer" | "user"))
    {
        let mut after_tap = false;
        for line in content.lines() {
            if let Some(p) = parse_product(line) {
                if after_tap {
                    tapped = Some(p.clone());
                }
                // The same catalog repeated in several messages lists each product once.
                if !products.iter().any(|q| q.sku == p.sku) {
                    products.push(p);
                }
            }
            after_tap = line.contains("tapped");
        }
    }
    if let Some(t) = tapped {
        products.retain(|p| p.sku != t.sku);
        products.insert(0, t.clone());
        return (products, format!("SKU {}", t.sku));
    }
    let customer = messages
        .iter()
        .rev()
        .find(|(role, _)| role == "user")
        .map(|(_, content)| {
            content
                .lines()
                .filter(|l| parse_product(l).is_none())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    (products, customer)
}

/// Name words the customer used; a mentioned SKU counts for more than any name.
fn score(product: &Product, said: &[String], folded_customer: &str) -> usize {
    let sku = fold(&product.sku);
    let sku_hit = if sku.len() >= 2 && folded_customer.contains(&sku) {
        100
    } else {
        0
    };
    let mut name_words = words(&product.name);
    name_words.dedup();
    let hits = name_words
        .iter()
        .filter(|w| w.chars().count() >= 3 && !STOPWORDS.contains(&w.as_str()))
        .filter(|w| said.contains(w))
        .count();
    sku_hit + hits
}

/// `- <name> (SKU <sku>): <price> [<currency>][, stock <n>]`; `*` and `•` bullets work too.
pub fn parse_product(line: &str) -> Option<Product> {
    let line = line.trim();
    let line = ["- ", "* ", "• "]
        .iter()
        .find_map(|b| line.strip_prefix(b))?;
    // ASCII lowercasing keeps byte offsets, so indexes found in `lower` cut `line`.
    let lower = line.to_ascii_lowercase();
    let open = lower.find("(sku")?;
    let name = line[..open].trim();
    let close = open + lower[open..].find(')')?;
    let sku = line[open + 4..close].trim().trim_start_matches(':').trim();
    let rest = line[close + 1..].trim_start().strip_prefix(':')?;
    let lower_rest = &lower[lower.len() - rest.len()..];
    let (price, stock) = match lower_rest.find("stock") {
        Some(i) => {
            let digits: String = rest[i + 5..]
                .trim_start_matches([':', ' '])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            (&rest[..i], digits.parse().ok())
        }
        None => (rest, None),
    };
    let price = price
        .trim()
        .trim_end_matches([',', ';'])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if name.is_empty() || sku.is_empty() || !price.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(Product {
        name: name.to_owned(),
        sku: sku.to_owned(),
        price,
        stock,
    })
}

/// Folded words: `Camisetas azuis!` → `camiseta`, `azui`.
fn words(text: &str) -> Vec<String> {
    fold(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| match w.strip_suffix('s') {
            Some(stem) if stem.chars().count() >= 3 => stem.to_owned(),
            _ => w.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
            .collect()
    }

    #[test]
    fn product_lines_parse_with_and_without_currency_and_stock() {
        assert_eq!(
            parse_product("- Camiseta Azul (SKU CAM-AZ): 89.90 BRL, stock 3"),
            Some(Product {
                name: "Camiseta Azul".to_owned(),
                sku: "CAM-AZ".to_owned(),
                price: "89.90 BRL".to_owned(),
                stock: Some(3),
            })
        );
        let p = parse_product("  * Caneca (sku CAN-1): 35").expect("parses");
        assert_eq!((p.price.as_str(), p.stock), ("35", None));
        let p = parse_product("- Boné (SKU B1): R$ 49,90, stock: 0").expect("parses");
        assert_eq!((p.price.as_str(), p.stock), ("R$ 49,90", Some(0)));
        assert_eq!(parse_product("Camiseta (SKU X): 10"), None);
        assert_eq!(parse_product("- Camiseta (SKU X): sob consulta"), None);
        assert_eq!(parse_product("- just a bullet"), None);
    }

    #[test]
    fn the_best_matching_product_is_named_with_price_and_stock() {
        let reply = respond(&msgs(&[
            (
                "system",
                "You sell clothes.\n- Camiseta Azul (SKU CAM-AZ): 89.90 BRL, stock 3\n\
                 - Calça Jeans (SKU CAL-J): 159.00 BRL, stock 0",
            ),
            ("user", "Oi! Vocês têm calças jeans?"),
        ]));
        assert_eq!(
            reply,
            "Calça Jeans costs 159.00 BRL, but it is out of stock right now. Can I suggest \
             something else?"
        );
    }

    #[test]
    fn a_sku_beats_name_words_and_ties_go_to_the_first_listed() {
        let catalog = [
            parse_product("- Camiseta Azul (SKU A1): 10, stock 1").expect("parses"),
            parse_product("- Camiseta Preta (SKU P2): 20, stock 2").expect("parses"),
        ];
        assert!(answer(&catalog, "camiseta").starts_with("Good news! Camiseta Azul"));
        assert!(answer(&catalog, "tem a p2 azul?").starts_with("Good news! Camiseta Preta"));
    }

    #[test]
    fn no_match_lists_up_to_three_and_no_catalog_is_generic() {
        let catalog: Vec<Product> = (1..=4)
            .map(|i| parse_product(&format!("- Item{i} (SKU S{i}): {i}.00")).expect("parses"))
            .collect();
        let reply = answer(&catalog, "bom dia");
        assert!(
            reply.contains("Item1 (1.00), Item2 (2.00), Item3 (3.00)"),
            "{reply}"
        );
        assert!(!reply.contains("Item4"), "{reply}");
        assert_eq!(
            answer(&[], "hello"),
            "Thanks for your message! How can I help you today?"
        );
    }

    #[test]
    fn asking_for_a_person_is_a_handoff_in_any_of_the_languages() {
        for text in [
            "quero falar com um atendente",
            "Can I talk to a HUMAN?",
            "prefiero hablar con una persona",
            "tem alguma pessoa aí?",
            "agentes, por favor",
        ] {
            assert_eq!(answer(&[], text), HANDOFF_MARKER, "{text}");
        }
    }

    #[test]
    fn the_customer_is_the_last_user_message_without_its_product_lines() {
        let reply = respond(&msgs(&[
            ("system", "- Caneca (SKU CAN): 35 BRL, stock 9"),
            ("user", "quero um atendente"),
            ("assistant", HANDOFF_MARKER),
            (
                "user",
                "- Boné (SKU B1): 49 BRL\nna verdade, quanto custa a caneca?",
            ),
        ]));
        assert_eq!(
            reply,
            "Good news! Caneca costs 35 BRL and we have 9 in stock. Would you like to order it?"
        );
    }
}
