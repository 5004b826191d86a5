//! The price guard: every money amount in a reply's text must be the catalog price of a product
//! in the prompt, and every chosen SKU must be one of those products. An answer that breaks
//! this is asked for once more with the problems stated; a second bad answer goes out without
//! the sentences that carry a wrong amount and without the unknown SKUs (its cards show the
//! catalog's prices). Counted in `igsales_reply_guard_total{outcome}`: `ok`, `retried_ok`,
//! `stripped`.
//!
//! Which price an amount must be: the products a sentence names (by name or SKU), else those
//! the sentence before named, else the products the answer chose for cards, else any product
//! in the prompt. Amounts are read in the common written forms: `R$ 89,90`, `89.90 BRL`,
//! `$12.50`, `1.234,56 reais`, and a bare `89,90` (two decimals); a bare integer (`3 unidades`)
//! is no amount.

use bigdecimal::{BigDecimal, RoundingMode, ToPrimitive};
use igsales_schema::products::{Product, fold};

use crate::sales::answer::{self, Answer};
use crate::sales::cards::{self, Lang};
use crate::sales::llm::{ChatMessage, LlmClient, LlmError};

pub const REPLY_GUARD: &str = "igsales_reply_guard_total";

/// Symbols written before an amount, longest first.
const SYMBOLS: &[&str] = &["R$", "US$", "U$", "$", "€", "£"];
/// Words written after an amount (folded), besides ISO codes.
const WORDS: &[&str] = &[
    "reais", "real", "dolares", "dolar", "dollars", "dollar", "euros", "euro", "pesos", "peso",
];

/// One amount in the text: where it is, as written, and its value in hundredths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    pub start: usize,
    pub end: usize,
    pub written: String,
    pub cents: i64,
}

/// A number's value in hundredths: the last separator is the decimal point when one or two
/// digits follow it, every other separator groups thousands.
fn cents_of(number: &str) -> Option<i64> {
    let last = number.rfind([',', '.']);
    let (int, frac) = match last {
        Some(i) if (1..=2).contains(&(number.len() - i - 1)) => (&number[..i], &number[i + 1..]),
        _ => (number, ""),
    };
    let int: String = int.chars().filter(char::is_ascii_digit).collect();
    let int: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().ok()? * 10,
        _ => frac.parse().ok()?,
    };
    int.checked_mul(100)?.checked_add(frac)
}

fn has_decimals(number: &str) -> bool {
    number
        .rfind([',', '.'])
        .is_some_and(|i| number.len() - i - 1 == 2)
}

/// The money amounts in `text`, in order.
pub fn amounts(text: &str) -> Vec<Amount> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() || (i > 0 && (bytes[i - 1].is_ascii_alphanumeric())) {
            i += 1;
            continue;
        }
        // A number: digits with single separators between digits.
        let start = i;
        let mut end = i;
        while end < bytes.len() {
            let separator = matches!(bytes[end], b'.' | b',')
                && end + 1 < bytes.len()
                && bytes[end + 1].is_ascii_digit();
            if !bytes[end].is_ascii_digit() && !separator {
                break;
            }
            end += 1;
        }
        i = end;
        if end < bytes.len() && bytes[end].is_ascii_alphabetic() {
            // Part of a word or a code like "A1B".
            continue;
        }
        let number = &text[start..end];
        let before = text[..start].trim_end_matches(' ');
        let symbol = SYMBOLS.iter().find(|s| before.ends_with(*s));
        let after = text[end..].trim_start_matches(' ');
        let word: String = after.chars().take_while(|c| c.is_alphabetic()).collect();
        let code = word.len() == 3
            && word.chars().all(|c| c.is_ascii_uppercase())
            && iso_currency::Currency::from_code(&word).is_some();
        let named = WORDS.contains(&fold(&word).as_str());
        if symbol.is_none() && !code && !named && !has_decimals(number) {
            continue;
        }
        let Some(cents) = cents_of(number) else {
            continue;
        };
        let (from, to) = match symbol {
            Some(s) => (before.len() - s.len(), end),
            None => (start, end),
        };
        let to = if code || named {
            end + (text[end..].len() - after.len()) + word.len()
        } else {
            to
        };
        out.push(Amount {
            start: from,
            end: to,
            written: text[from..to].to_owned(),
            cents,
        });
    }
    out
}

/// A catalog price in hundredths.
fn price_cents(p: &Product) -> Option<i64> {
    (p.price.with_scale_round(2, RoundingMode::HalfUp) * BigDecimal::from(100)).to_i64()
}

/// The sentences of `text` as byte ranges: a sentence ends at `.`, `!`, `?` or `…` followed by
/// whitespace (or the end), and at a line break.
fn sentences(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (k, (i, c)) in chars.iter().enumerate() {
        let next_blank = chars.get(k + 1).is_none_or(|(_, n)| n.is_whitespace());
        let ends = *c == '\n' || (matches!(c, '.' | '!' | '?' | '…') && next_blank);
        if ends {
            let end = i + c.len_utf8();
            out.push((start, end));
            start = end;
        }
    }
    if start < text.len() {
        out.push((start, text.len()));
    }
    out
}

/// What is wrong with an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    UnknownSku(String),
    /// An amount that is not the price of the products it is about (`expected`, when they are
    /// known: name and price as written for the merchant).
    WrongAmount {
        written: String,
        expected: Vec<(String, String)>,
    },
}

impl Problem {
    fn describe(&self) -> String {
        match self {
            Problem::UnknownSku(sku) => format!("SKU \"{sku}\" is not in the catalog"),
            Problem::WrongAmount { written, expected } if expected.is_empty() => {
                format!("\"{written}\" is not the price of any product in the catalog")
            }
            Problem::WrongAmount { written, expected } => {
                let of: Vec<String> = expected
                    .iter()
                    .map(|(name, price)| format!("{name} costs {price}"))
                    .collect();
                format!("\"{written}\" is not the catalog price ({})", of.join(", "))
            }
        }
    }
}

/// The products a sentence names.
fn named<'a>(sentence: &str, products: &'a [Product]) -> Vec<&'a Product> {
    let folded = fold(sentence);
    let lower = sentence.to_lowercase();
    products
        .iter()
        .filter(|p| {
            let name = fold(&p.name);
            (!name.is_empty() && folded.contains(&name))
                || (p.sku.len() >= 3 && lower.contains(&p.sku.to_lowercase()))
        })
        .collect()
}

/// The problems of `answer` against the prompt's `products`, and the byte ranges of the
/// sentences that carry a wrong amount.
pub fn check(
    answer: &Answer,
    products: &[Product],
    lang: Lang,
) -> (Vec<Problem>, Vec<(usize, usize)>) {
    let mut problems: Vec<Problem> = answer
        .skus
        .iter()
        .filter(|s| !products.iter().any(|p| p.sku == **s))
        .map(|s| Problem::UnknownSku(s.clone()))
        .collect();
    let chosen = cards::chosen(answer, products);
    let text = &answer.text;
    let found = amounts(text);
    let mut wrong_sentences = Vec::new();
    let mut previous: Vec<&Product> = Vec::new();
    for (s, e) in sentences(text) {
        let here = named(&text[s..e], products);
        // `known`: the amount is about particular products, which the note to the model names.
        let (about, known): (Vec<&Product>, bool) = if !here.is_empty() {
            (here.clone(), true)
        } else if !previous.is_empty() {
            (previous.clone(), true)
        } else if !chosen.is_empty() {
            (chosen.clone(), true)
        } else {
            (products.iter().collect(), false)
        };
        if !here.is_empty() {
            previous = here;
        }
        let mut bad = false;
        for a in found.iter().filter(|a| a.start >= s && a.start < e) {
            if about.iter().any(|p| price_cents(p) == Some(a.cents)) {
                continue;
            }
            bad = true;
            let expected = if !known {
                Vec::new()
            } else {
                about
                    .iter()
                    .map(|p| (p.name.clone(), cards::price(p, lang)))
                    .collect()
            };
            problems.push(Problem::WrongAmount {
                written: a.written.clone(),
                expected,
            });
        }
        if bad {
            wrong_sentences.push((s, e));
        }
    }
    (problems, wrong_sentences)
}

/// `answer` without the sentences in `wrong` and without unknown SKUs. When no sentence is
/// left, a line that sends the customer to the cards (or offers help).
pub fn strip(
    answer: &Answer,
    products: &[Product],
    wrong: &[(usize, usize)],
    lang: Lang,
) -> Answer {
    let mut text = String::new();
    let mut at = 0;
    for (s, e) in wrong {
        text.push_str(&answer.text[at..*s]);
        at = *e;
    }
    text.push_str(&answer.text[at..]);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let skus: Vec<String> = answer
        .skus
        .iter()
        .filter(|s| products.iter().any(|p| p.sku == **s))
        .cloned()
        .collect();
    let text = if text.chars().any(char::is_alphanumeric) {
        text
    } else if skus.is_empty() {
        lang.labels().anything_else.to_owned()
    } else {
        lang.labels().see_below.to_owned()
    };
    Answer {
        text,
        skus,
        quick_replies: answer.quick_replies.clone(),
        handoff: answer.handoff,
    }
}

/// Asks the model (structured, with the plain-text fallback) and holds its answer to the
/// catalog as the module comment says. `plain` builds the conversation with plain-text
/// instructions.
pub async fn ask(
    llm: &LlmClient,
    messages: Vec<ChatMessage>,
    plain: impl Fn() -> Vec<ChatMessage>,
    products: &[Product],
    lang: Lang,
) -> Result<Answer, LlmError> {
    let first = answer::ask(llm, messages.clone(), &plain).await?;
    if first.handoff {
        return Ok(first);
    }
    let (problems, _) = check(&first, products, lang);
    if problems.is_empty() {
        metrics::counter!(REPLY_GUARD, "outcome" => "ok").increment(1);
        return Ok(first);
    }
    let note = retry_note(&problems);
    let again = |mut m: Vec<ChatMessage>| {
        m.push(ChatMessage::new(
            "assistant",
            serde_json::to_string(&first).unwrap_or_else(|_| first.text.clone()),
        ));
        m.push(ChatMessage::new("system", note.clone()));
        m
    };
    let second = answer::ask(llm, again(messages), || again(plain())).await?;
    if second.handoff {
        return Ok(second);
    }
    let (problems, wrong) = check(&second, products, lang);
    if problems.is_empty() {
        metrics::counter!(REPLY_GUARD, "outcome" => "retried_ok").increment(1);
        return Ok(second);
    }
    tracing::info!(
        problems = problems.len(),
        "the model's answer broke the price guard twice; sending it without the wrong figures"
    );
    metrics::counter!(REPLY_GUARD, "outcome" => "stripped").increment(1);
    Ok(strip(&second, products, &wrong, lang))
}

/// What the second ask is told.
pub fn retry_note(problems: &[Problem]) -> String {
    let list: Vec<String> = problems.iter().map(Problem::describe).collect();
    format!(
        "Your previous answer had problems: {}. Answer the customer's message again: write only \
         prices exactly as the catalog lists them, each with the product it belongs to, and \
         choose only SKUs that are in the catalog.",
        list.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(sku: &str, name: &str, price: &str) -> Product {
        Product {
            sku: sku.into(),
            name: name.into(),
            description: String::new(),
            tags: String::new(),
            price: price.parse().expect("decimal"),
            currency: Some("BRL".into()),
            stock: Some(3),
            url: None,
            image_url: None,
        }
    }

    fn catalog() -> Vec<Product> {
        vec![
            product("TOTE-BLU", "Bolsa azul", "89.90"),
            product("TEE-GRN", "Camiseta verde", "49.9"),
            product("CAP-1", "Boné", "1234.5"),
        ]
    }

    fn said(text: &str) -> Vec<(String, i64)> {
        amounts(text)
            .into_iter()
            .map(|a| (a.written, a.cents))
            .collect()
    }

    fn answer(text: &str, skus: &[&str]) -> Answer {
        Answer {
            text: text.into(),
            skus: skus.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn amounts_are_read_in_their_common_written_forms() {
        assert_eq!(said("Custa R$ 89,90."), [("R$ 89,90".into(), 8990)]);
        assert_eq!(said("custa R$89.90!"), [("R$89.90".into(), 8990)]);
        assert_eq!(said("89.90 BRL"), [("89.90 BRL".into(), 8990)]);
        assert_eq!(said("por 89,90 e"), [("89,90".into(), 8990)]);
        assert_eq!(said("it's $12.50"), [("$12.50".into(), 1250)]);
        assert_eq!(said("R$ 1.234,50"), [("R$ 1.234,50".into(), 123450)]);
        assert_eq!(said("$1,234.50"), [("$1,234.50".into(), 123450)]);
        assert_eq!(said("R$ 1.234"), [("R$ 1.234".into(), 123400)]);
        assert_eq!(said("35 reais"), [("35 reais".into(), 3500)]);
        assert_eq!(said("€ 9,5"), [("€ 9,5".into(), 950)]);
        // Not amounts: counts, sizes, codes, times.
        assert!(said("temos 3 unidades no tamanho 42, SKU A1B2, 10h").is_empty());
        assert!(said("modelo 2024").is_empty());
    }

    #[test]
    fn the_catalog_s_prices_pass_and_invented_ones_do_not() {
        let c = catalog();
        let ok = answer(
            "A Bolsa azul custa R$ 89,90 e a Camiseta verde sai por 49.90 BRL. O Boné: R$ 1.234,50.",
            &["TOTE-BLU"],
        );
        assert_eq!(check(&ok, &c, Lang::PtBr).0, []);
        let invented = answer("A Bolsa azul custa R$ 79,90! Quer?", &["TOTE-BLU"]);
        let (problems, wrong) = check(&invented, &c, Lang::PtBr);
        assert_eq!(
            problems,
            [Problem::WrongAmount {
                written: "R$ 79,90".into(),
                expected: vec![("Bolsa azul".into(), "R$ 89,90".into())],
            }]
        );
        assert_eq!(strip(&invented, &c, &wrong, Lang::PtBr).text, "Quer?");
        let unknown = answer("Temos!", &["NOPE", "TOTE-BLU"]);
        assert_eq!(
            check(&unknown, &c, Lang::PtBr).0,
            [Problem::UnknownSku("NOPE".into())]
        );
        assert_eq!(strip(&unknown, &c, &[], Lang::PtBr).skus, ["TOTE-BLU"]);
    }

    #[test]
    fn another_product_s_price_is_wrong_for_the_product_named_or_chosen() {
        let c = catalog();
        // Named in the sentence.
        let named = answer("Good news! Bolsa azul costs 49.90 BRL.", &[]);
        assert_eq!(check(&named, &c, Lang::En).0.len(), 1);
        // Named the sentence before.
        let before = answer("A Bolsa azul é linda. Custa R$ 49,90.", &[]);
        let (problems, wrong) = check(&before, &c, Lang::PtBr);
        assert_eq!(problems.len(), 1);
        assert_eq!(
            strip(&before, &c, &wrong, Lang::PtBr).text,
            "A Bolsa azul é linda."
        );
        // Named nowhere: the chosen cards' product.
        let chosen = answer("Custa R$ 49,90.", &["TOTE-BLU"]);
        let (problems, wrong) = check(&chosen, &c, Lang::PtBr);
        assert_eq!(problems.len(), 1);
        // Everything stripped: the text sends the customer to the card, whose price is real.
        assert_eq!(
            strip(&chosen, &c, &wrong, Lang::PtBr).text,
            "Veja os detalhes abaixo."
        );
        // Nothing named or chosen: any catalog price will do.
        assert_eq!(
            check(&answer("Tudo a partir de R$ 49,90.", &[]), &c, Lang::PtBr).0,
            []
        );
        assert!(
            retry_note(&problems)
                .contains("\"R$ 49,90\" is not the catalog price (Bolsa azul costs R$ 89,90)")
        );
    }
}
