//! What the customer receives for one answer, as reply parts (SPEC §5.3, each sent at most once,
//! in order): the text (≤ 1000 bytes a part, at most three), then one generic-template message
//! of product cards for the chosen SKUs, with quick replies on the last message.
//!
//! A card: the product's name as title, its price (in the catalog's currency, written the
//! merchant's way) and stock state as subtitle, its image, a tap on the card and a "View
//! product" button opening its URL, and a "I want this" postback carrying the SKU. A product
//! without a URL gets neither the default action nor the link button; one out of stock is shown
//! as such and gets no "I want this" button (it cannot be bought now). Labels follow the
//! merchant's language.

use bigdecimal::{BigDecimal, RoundingMode};
use igsales_meta::send::{
    Button, Element, MAX_QUICK_REPLIES, OutgoingMessage, QuickReply, cut_bytes,
};
use igsales_schema::outbound::NewPart;
use igsales_schema::products::Product;

use crate::sales::answer::Answer;
use crate::sales::reply;

/// The merchant's language: card and quick-reply labels, and how prices are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    PtBr,
    Es,
    En,
}

impl From<igsales_schema::merchants::Language> for Lang {
    fn from(l: igsales_schema::merchants::Language) -> Self {
        use igsales_schema::merchants::Language;
        match l {
            Language::PtBr => Lang::PtBr,
            Language::Es => Lang::Es,
            Language::En => Lang::En,
        }
    }
}

/// The words on cards and around them.
pub struct Labels {
    pub view: &'static str,
    pub want: &'static str,
    pub in_stock: &'static str,
    pub out_of_stock: &'static str,
    /// The text when the guard took every sentence out and cards follow.
    pub see_below: &'static str,
    /// The text when the guard took every sentence out and nothing follows.
    pub anything_else: &'static str,
}

impl Lang {
    pub fn labels(self) -> Labels {
        match self {
            Lang::PtBr => Labels {
                view: "Ver produto",
                want: "Quero este",
                in_stock: "Em estoque",
                out_of_stock: "Esgotado",
                see_below: "Veja os detalhes abaixo.",
                anything_else: "Posso ajudar com mais alguma coisa?",
            },
            Lang::Es => Labels {
                view: "Ver producto",
                want: "Lo quiero",
                in_stock: "Disponible",
                out_of_stock: "Agotado",
                see_below: "Mira los detalles abajo.",
                anything_else: "¿Te ayudo con algo más?",
            },
            Lang::En => Labels {
                view: "View product",
                want: "I want this",
                in_stock: "In stock",
                out_of_stock: "Out of stock",
                see_below: "Here are the details.",
                anything_else: "Can I help with anything else?",
            },
        }
    }
}

/// A postback from a card's "I want this" button.
const WANT: &str = "WANT:";
/// A quick reply about one product.
const ABOUT: &str = "SKU:";
/// A quick reply about no product in particular.
const SAY: &str = "SAY";

/// What a tap (a postback, a quick reply) says it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tap<'a> {
    /// "I want this" on a product's card.
    Want(&'a str),
    /// A quick reply about a product.
    About(&'a str),
}

impl<'a> Tap<'a> {
    pub fn parse(payload: &'a str) -> Option<Tap<'a>> {
        let sku = |s: &'a str| Some(s.trim()).filter(|s| !s.is_empty());
        if let Some(rest) = payload.strip_prefix(WANT) {
            return sku(rest).map(Tap::Want);
        }
        payload.strip_prefix(ABOUT).and_then(sku).map(Tap::About)
    }

    pub fn sku(self) -> &'a str {
        match self {
            Tap::Want(s) | Tap::About(s) => s,
        }
    }
}

/// `amount` in `currency` written the `lang` way: pt-BR and es `R$ 1.234,56`, en `R$1,234.56`
/// (the currency's own number of decimals; no currency: the number alone).
pub fn money(amount: &BigDecimal, currency: Option<&str>, lang: Lang) -> String {
    let known = currency.and_then(iso_currency::Currency::from_code);
    let decimals = known.and_then(|c| c.exponent()).unwrap_or(2);
    let rounded = amount.with_scale_round(i64::from(decimals), RoundingMode::HalfUp);
    let plain = rounded.to_string();
    let (int, frac) = plain.split_once('.').unwrap_or((plain.as_str(), ""));
    let (thousands, point) = match lang {
        Lang::PtBr | Lang::Es => ('.', ','),
        Lang::En => (',', '.'),
    };
    let digits: Vec<char> = int.chars().collect();
    let mut grouped = String::new();
    for (i, d) in digits.iter().enumerate() {
        if i > 0
            && (digits.len() - i).is_multiple_of(3)
            && d.is_ascii_digit()
            && digits[i - 1] != '-'
        {
            grouped.push(thousands);
        }
        grouped.push(*d);
    }
    let number = if frac.is_empty() {
        grouped
    } else {
        format!("{grouped}{point}{frac}")
    };
    let symbol = match (known, currency) {
        (Some(c), _) if !c.symbol().symbol.is_empty() => c.symbol().symbol,
        (_, Some(code)) => code.to_owned(),
        (_, None) => return number,
    };
    match lang {
        Lang::PtBr | Lang::Es => format!("{symbol} {number}"),
        Lang::En => format!("{symbol}{number}"),
    }
}

/// A product's price, written for the merchant.
pub fn price(p: &Product, lang: Lang) -> String {
    money(&p.price, p.currency.as_deref(), lang)
}

/// One product's card.
pub fn card(p: &Product, lang: Lang) -> Element {
    let l = lang.labels();
    let stock = match p.stock {
        Some(0) => Some(l.out_of_stock),
        Some(_) => Some(l.in_stock),
        None => None,
    };
    let subtitle = match stock {
        Some(s) => format!("{} · {s}", price(p, lang)),
        None => price(p, lang),
    };
    let mut e = Element::new(&p.name)
        .subtitle(&subtitle)
        .image(p.image_url.as_deref())
        .opens(p.url.as_deref());
    if let Some(url) = p.url.as_deref() {
        e = e.button(Button::WebUrl {
            url: url.to_owned(),
            title: l.view.to_owned(),
        });
    }
    if p.stock != Some(0) {
        e = e.button(Button::Postback {
            title: l.want.to_owned(),
            payload: format!("{WANT}{}", p.sku),
        });
    }
    e
}

/// The products the answer chose, in its order, once each; SKUs not among `products` are left
/// out.
pub fn chosen<'a>(answer: &Answer, products: &'a [Product]) -> Vec<&'a Product> {
    let mut out: Vec<&Product> = Vec::new();
    for sku in &answer.skus {
        if let Some(p) = products.iter().find(|p| p.sku == *sku)
            && !out.iter().any(|o| o.sku == p.sku)
        {
            out.push(p);
        }
    }
    out
}

/// The answer's suggestions as quick replies: one about a product carries its SKU.
fn suggestions(answer: &Answer, products: &[Product]) -> Vec<QuickReply> {
    answer
        .quick_replies
        .iter()
        .filter_map(|q| {
            let payload = if products.iter().any(|p| p.sku == q.sku) {
                format!("{ABOUT}{}", q.sku)
            } else {
                SAY.to_owned()
            };
            QuickReply::text(&q.title, &payload)
        })
        .collect()
}

/// The answer as the one message Meta allows in a private reply to a comment: its first text
/// part, with the suggestions and then each chosen product (by name) as quick replies, so a
/// tap opens the conversation about it (where its card follows). `None`: nothing to send.
pub fn private_reply(answer: &Answer, products: &[Product]) -> Option<NewPart> {
    let text = reply::split(&answer.text).into_iter().next()?;
    let mut quick = suggestions(answer, products);
    for p in chosen(answer, products) {
        let payload = format!("{ABOUT}{}", p.sku);
        if quick.len() < MAX_QUICK_REPLIES
            && !quick.iter().any(|q| q.payload() == payload)
            && let Some(q) = QuickReply::text(&p.name, &payload)
        {
            quick.push(q);
        }
    }
    quick.truncate(MAX_QUICK_REPLIES);
    let message = OutgoingMessage::text(text.clone());
    let message = if quick.is_empty() {
        None
    } else {
        Some(message.with_quick_replies(quick))
    };
    Some(NewPart {
        payload: message.and_then(|m| serde_json::to_value(m).ok()),
        ..NewPart::text(text)
    })
}

/// The answer as reply parts; empty when there is nothing to send.
pub fn parts(answer: &Answer, products: &[Product], lang: Lang) -> Vec<NewPart> {
    let texts = reply::split(&answer.text);
    let chosen = chosen(answer, products);
    let quick = suggestions(answer, products);
    let mut parts: Vec<(String, Option<OutgoingMessage>)> =
        texts.into_iter().map(|t| (t, None)).collect();
    if !chosen.is_empty() {
        let summary = chosen
            .iter()
            .map(|p| format!("{} ({})", p.name, price(p, lang)))
            .collect::<Vec<_>>()
            .join("; ");
        let message = OutgoingMessage::cards(chosen.iter().map(|p| card(p, lang)).collect());
        parts.push((
            cut_bytes(&summary, reply::MAX_PART_BYTES).to_owned(),
            Some(message),
        ));
    }
    if !quick.is_empty()
        && let Some((text, message)) = parts.last_mut()
    {
        let m = message
            .take()
            .unwrap_or_else(|| OutgoingMessage::text(text.clone()));
        *message = Some(m.with_quick_replies(quick));
    }
    parts
        .into_iter()
        .map(|(text, message)| NewPart {
            payload: message.and_then(|m| serde_json::to_value(m).ok()),
            ..NewPart::text(text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sales::answer::Suggestion;

    fn product(sku: &str, name: &str, price: &str, stock: Option<i32>) -> Product {
        Product {
            sku: sku.into(),
            name: name.into(),
            description: String::new(),
            tags: String::new(),
            price: price.parse().expect("decimal"),
            currency: Some("BRL".into()),
            stock,
            url: Some(format!("https://loja.example/{sku}")),
            image_url: Some(format!("https://cdn.example/{sku}.jpg")),
        }
    }

    fn d(s: &str) -> BigDecimal {
        s.parse().expect("decimal")
    }

    #[test]
    fn prices_are_written_for_the_merchant_s_language() {
        assert_eq!(money(&d("89.9"), Some("BRL"), Lang::PtBr), "R$ 89,90");
        assert_eq!(money(&d("1234.5"), Some("BRL"), Lang::PtBr), "R$ 1.234,50");
        assert_eq!(
            money(&d("1234567.891"), Some("EUR"), Lang::Es),
            "€ 1.234.567,89"
        );
        assert_eq!(money(&d("12.5"), Some("USD"), Lang::En), "$12.50");
        assert_eq!(money(&d("1234.5"), Some("BRL"), Lang::En), "R$1,234.50");
        assert_eq!(money(&d("35"), None, Lang::PtBr), "35,00");
        // Currencies without decimals keep none; unknown codes are written as they are.
        assert_eq!(money(&d("5000"), Some("CLP"), Lang::Es), "$ 5.000");
        assert_eq!(money(&d("10"), Some("XYZ"), Lang::En), "XYZ10.00");
        assert_eq!(money(&d("999"), Some("BRL"), Lang::PtBr), "R$ 999,00");
    }

    #[test]
    fn a_card_shows_name_price_stock_image_link_and_a_postback_with_the_sku() {
        let p = product("CAN-1", "Caneca azul", "35", Some(4));
        let v = serde_json::to_value(card(&p, Lang::PtBr)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "title": "Caneca azul",
                "subtitle": "R$ 35,00 · Em estoque",
                "image_url": "https://cdn.example/CAN-1.jpg",
                "default_action": {"type": "web_url", "url": "https://loja.example/CAN-1"},
                "buttons": [
                    {"type": "web_url", "url": "https://loja.example/CAN-1", "title": "Ver produto"},
                    {"type": "postback", "title": "Quero este", "payload": "WANT:CAN-1"}
                ]
            })
        );
        assert_eq!(Tap::parse("WANT:CAN-1"), Some(Tap::Want("CAN-1")));
        assert_eq!(Tap::parse("SKU:CAN-1"), Some(Tap::About("CAN-1")));
        assert_eq!(Tap::parse("SAY"), None);
        assert_eq!(Tap::parse("WANT:"), None);
        // No URL: no link; out of stock: said so, and nothing to want.
        let gone = Product {
            url: None,
            image_url: None,
            ..product("B-1", "Boné", "49.9", Some(0))
        };
        let e = card(&gone, Lang::En);
        assert_eq!(e.subtitle.as_deref(), Some("R$49.90 · Out of stock"));
        assert!(e.default_action.is_none() && e.buttons.is_empty() && e.image_url.is_none());
        let unknown = Product {
            stock: None,
            ..product("T", &"Camiseta ".repeat(20), "10", None)
        };
        let e = card(&unknown, Lang::Es);
        assert_eq!(e.subtitle.as_deref(), Some("R$ 10,00"));
        assert!(e.title.chars().count() <= 80);
        assert_eq!(e.buttons.len(), 2);
    }

    #[test]
    fn an_answer_becomes_text_then_cards_with_the_quick_replies_on_the_last_message() {
        let catalog = [
            product("CAN-1", "Caneca azul", "35", Some(4)),
            product("B-1", "Boné jeans", "49.9", Some(2)),
        ];
        let answer = Answer {
            text: "Temos a Caneca azul por R$ 35,00!".into(),
            skus: vec!["CAN-1".into(), "NOPE".into(), "CAN-1".into()],
            quick_replies: vec![
                Suggestion {
                    title: "E o boné jeans, quanto custa?".into(),
                    sku: "B-1".into(),
                },
                Suggestion {
                    title: "Frete".into(),
                    sku: String::new(),
                },
            ],
            handoff: false,
        };
        let parts = parts(&answer, &catalog, Lang::PtBr);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], NewPart::text("Temos a Caneca azul por R$ 35,00!"));
        assert_eq!(parts[1].text, "Caneca azul (R$ 35,00)");
        let m: OutgoingMessage =
            serde_json::from_value(parts[1].payload.clone().expect("payload")).expect("message");
        assert_eq!(m.check(), Ok(()));
        assert_eq!(m.elements().len(), 1, "unknown and repeated SKUs left out");
        let qr: Vec<(&str, &str)> = m
            .quick_replies
            .iter()
            .map(|q| (q.title(), q.payload()))
            .collect();
        assert_eq!(qr, [("E o boné jeans, quan", "SKU:B-1"), ("Frete", "SAY")]);
        // Without cards, the quick replies ride on the last text part.
        let text_only = Answer {
            skus: vec![],
            ..answer.clone()
        };
        let parts = super::parts(&text_only, &catalog, Lang::PtBr);
        assert_eq!(parts.len(), 1);
        let m: OutgoingMessage =
            serde_json::from_value(parts[0].payload.clone().expect("payload")).expect("message");
        assert_eq!(m.text.as_deref(), Some("Temos a Caneca azul por R$ 35,00!"));
        assert_eq!(m.quick_replies.len(), 2);
        assert!(super::parts(&Answer::default(), &catalog, Lang::PtBr).is_empty());
    }
}
