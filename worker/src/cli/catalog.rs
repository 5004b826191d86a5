//! Catalog files for `worker catalog import`: CSV with the header
//! `sku,name,description,price,currency,stock,url,image_url` and optionally `tags`
//! (comma-separated words, in any column order), or JSON, an array of objects with the same
//! keys. The whole file is validated before anything is written: one bad row and
//! nothing is imported, with every bad row named (CSV line / JSON item, 1-based).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use bigdecimal::BigDecimal;
use igsales_schema::products::Product;

pub const COLUMNS: [&str; 9] = [
    "sku",
    "name",
    "description",
    "price",
    "currency",
    "stock",
    "url",
    "image_url",
    "tags",
];
/// Columns a file may leave out (today's files have no tags).
const OPTIONAL: [&str; 1] = ["tags"];
/// How many bad rows one run reports; enough to fix a file in a few passes.
const MAX_REPORTED: usize = 20;

/// Where a row sits in its file, as a person opening the file would count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowRef {
    CsvLine(u64),
    JsonItem(usize),
}

impl fmt::Display for RowRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowRef::CsvLine(n) => write!(f, "CSV line {n}"),
            RowRef::JsonItem(n) => write!(f, "JSON item {n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub row: Option<RowRef>,
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.row {
            Some(row) => write!(f, "{row}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("unsupported catalog file {0}: use a .csv or .json file")]
    UnknownFormat(String),
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the catalog is invalid, nothing was imported:\n{}", list(.0))]
    Invalid(Vec<RowError>),
}

fn list(errors: &[RowError]) -> String {
    let mut out = String::new();
    for e in errors.iter().take(MAX_REPORTED) {
        out.push_str("  - ");
        out.push_str(&e.to_string());
        out.push('\n');
    }
    if errors.len() > MAX_REPORTED {
        out.push_str(&format!("  … and {} more\n", errors.len() - MAX_REPORTED));
    }
    out
}

/// Reads and validates a catalog file, choosing the format by extension.
pub fn read_file(path: &Path) -> Result<Vec<Product>, CatalogError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let shown = path.display().to_string();
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| CatalogError::Read {
            path: shown.clone(),
            reason: e.kind().to_string(),
        })
    };
    match ext.as_deref() {
        Some("csv") => parse_csv(&read(path)?),
        Some("json") => parse_json(&read(path)?),
        _ => Err(CatalogError::UnknownFormat(shown)),
    }
}

/// One row's fields as text, before validation (`None`: empty or absent).
#[derive(Debug, Default)]
struct RawRow {
    fields: [Option<String>; COLUMNS.len()],
}

impl RawRow {
    fn get(&self, column: &str) -> Option<&str> {
        COLUMNS
            .iter()
            .position(|c| *c == column)
            .and_then(|i| self.fields[i].as_deref())
    }
}

pub fn parse_csv(bytes: &[u8]) -> Result<Vec<Product>, CatalogError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header_error = |message: String| {
        CatalogError::Invalid(vec![RowError {
            row: Some(RowRef::CsvLine(1)),
            message,
        }])
    };
    let headers = reader
        .headers()
        .map_err(|e| header_error(format!("unreadable header ({})", csv_reason(&e))))?
        .clone();
    let mut index = [usize::MAX; COLUMNS.len()];
    for (i, name) in headers.iter().enumerate() {
        let name = name.trim_start_matches('\u{feff}');
        match COLUMNS.iter().position(|c| *c == name) {
            Some(col) if index[col] == usize::MAX => index[col] = i,
            Some(_) => return Err(header_error(format!("column {name} appears twice"))),
            None => return Err(header_error(format!("unknown column {name:?}"))),
        }
    }
    if let Some(missing) = COLUMNS
        .iter()
        .zip(index)
        .find(|(c, i)| *i == usize::MAX && !OPTIONAL.contains(c))
    {
        return Err(header_error(format!(
            "missing column {} (header must be {}, tags optional)",
            missing.0,
            COLUMNS[..8].join(",")
        )));
    }

    let mut rows = Vec::new();
    for record in reader.records() {
        match record {
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                rows.push((
                    RowRef::CsvLine(line),
                    Err(format!("unreadable row ({})", csv_reason(&e))),
                ));
            }
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line());
                let mut raw = RawRow::default();
                for (col, i) in index.iter().enumerate() {
                    raw.fields[col] = record.get(*i).filter(|v| !v.is_empty()).map(str::to_owned);
                }
                rows.push((RowRef::CsvLine(line), Ok(raw)));
            }
        }
    }
    finish(rows)
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not UTF-8".to_owned(),
        _ => "malformed CSV".to_owned(),
    }
}

pub fn parse_json(bytes: &[u8]) -> Result<Vec<Product>, CatalogError> {
    let whole = |message: String| CatalogError::Invalid(vec![RowError { row: None, message }]);
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        whole(format!(
            "not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let serde_json::Value::Array(items) = value else {
        return Err(whole(
            "the file must hold a JSON array of objects".to_owned(),
        ));
    };
    let rows = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| (RowRef::JsonItem(i + 1), json_row(item)))
        .collect();
    finish(rows)
}

fn json_row(item: serde_json::Value) -> Result<RawRow, String> {
    let serde_json::Value::Object(map) = item else {
        return Err("not a JSON object".to_owned());
    };
    let mut raw = RawRow::default();
    for (key, value) in map {
        let Some(col) = COLUMNS.iter().position(|c| *c == key) else {
            return Err(format!("unknown key {key:?}"));
        };
        raw.fields[col] = match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
            // Prices and stock may be numbers; their shortest decimal form is what was written.
            serde_json::Value::Number(n) if key == "price" || key == "stock" => Some(n.to_string()),
            _ => return Err(format!("{key}: expected a string")),
        };
    }
    Ok(raw)
}

/// Validates every row, rejects duplicate SKUs, and returns all rows or all problems.
fn finish(rows: Vec<(RowRef, Result<RawRow, String>)>) -> Result<Vec<Product>, CatalogError> {
    let mut errors = Vec::new();
    let mut products = Vec::with_capacity(rows.len());
    let mut seen: HashMap<String, RowRef> = HashMap::new();
    for (row, raw) in rows {
        match raw.and_then(|raw| validate(&raw)) {
            Err(message) => errors.push(RowError {
                row: Some(row),
                message,
            }),
            Ok(product) => {
                if let Some(first) = seen.get(&product.sku) {
                    errors.push(RowError {
                        row: Some(row),
                        message: format!("sku {:?} already appears at {first}", product.sku),
                    });
                } else {
                    seen.insert(product.sku.clone(), row);
                    products.push(product);
                }
            }
        }
    }
    if products.is_empty() && errors.is_empty() {
        errors.push(RowError {
            row: None,
            message: "the file holds no products".to_owned(),
        });
    }
    if errors.is_empty() {
        Ok(products)
    } else {
        Err(CatalogError::Invalid(errors))
    }
}

fn text(raw: &RawRow, column: &str, max_chars: usize, required: bool) -> Result<String, String> {
    let value = raw.get(column).unwrap_or("");
    if required && value.is_empty() {
        return Err(format!("{column}: required"));
    }
    if value.chars().count() > max_chars {
        return Err(format!("{column}: longer than {max_chars} characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(format!("{column}: contains control characters"));
    }
    Ok(value.to_owned())
}

fn web_url(raw: &RawRow, column: &str) -> Result<Option<String>, String> {
    let Some(value) = raw.get(column) else {
        return Ok(None);
    };
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            Ok(Some(u.to_string()))
        }
        _ => Err(format!("{column}: expected an absolute http(s) URL")),
    }
}

fn validate(raw: &RawRow) -> Result<Product, String> {
    let sku = text(raw, "sku", 128, true)?;
    if sku.chars().any(char::is_whitespace) {
        return Err("sku: must not contain spaces".to_owned());
    }
    let name = text(raw, "name", 500, true)?;
    let description = text(raw, "description", 10_000, false)?;
    // "presente,  cozinha," is stored as "presente, cozinha".
    let tags = text(raw, "tags", 2000, false)?
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(", ");

    let currency = match raw.get("currency") {
        None => None,
        Some(code) => {
            let code = code.to_ascii_uppercase();
            let currency = iso_currency::Currency::from_code(&code)
                .ok_or_else(|| "currency: expected an ISO 4217 code such as EUR".to_owned())?;
            Some((code, currency))
        }
    };

    let price_text = raw.get("price").ok_or("price: required")?;
    let (whole, fraction) = price_text.split_once('.').unwrap_or((price_text, ""));
    let well_formed = !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && !(price_text.contains('.') && fraction.is_empty());
    if !well_formed {
        return Err("price: expected a decimal such as 49.90".to_owned());
    }
    if whole.trim_start_matches('0').len() > 10 {
        return Err("price: more than 10 digits before the point".to_owned());
    }
    let max_decimals = currency
        .as_ref()
        .and_then(|(_, c)| c.exponent())
        .map_or(4, usize::from);
    if fraction.trim_end_matches('0').len() > max_decimals {
        return Err(format!(
            "price: more than {max_decimals} decimal places for its currency"
        ));
    }
    let price = BigDecimal::from_str(price_text)
        .map_err(|_| "price: expected a decimal such as 49.90".to_owned())?;

    let stock = match raw.get("stock") {
        None => None,
        Some(s) => Some(
            s.parse::<i32>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| "stock: expected a whole number ≥ 0".to_owned())?,
        ),
    };

    Ok(Product {
        sku,
        name,
        description,
        tags,
        price,
        currency: currency.map(|(code, _)| code),
        stock,
        url: web_url(raw, "url")?,
        image_url: web_url(raw, "image_url")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "sku,name,description,price,currency,stock,url,image_url\n";

    fn errors(result: Result<Vec<Product>, CatalogError>) -> Vec<String> {
        match result {
            Err(CatalogError::Invalid(e)) => e.iter().map(ToString::to_string).collect(),
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn csv_rows_parse_with_optional_trailing_columns() {
        let csv = format!(
            "{HEADER}TEE-1,Black tee,Cotton,49.90,brl,12,https://shop.example/tee,\nMUG-2,Mug,,15,,,,\n"
        );
        let rows = parse_csv(csv.as_bytes()).expect("valid");
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].price,
            BigDecimal::from_str("49.90").expect("decimal")
        );
        assert_eq!(rows[0].currency.as_deref(), Some("BRL"));
        assert_eq!(rows[0].stock, Some(12));
        assert_eq!(rows[1].currency, None);
        assert_eq!(rows[1].image_url, None);
    }

    #[test]
    fn a_bad_csv_row_is_named_by_its_line() {
        let csv = format!("{HEADER}A,Ok,,1.00,,,,\nB,Bad price,,12,5,,,,\nC,Also bad,,abc,,,,\n");
        let errs = errors(parse_csv(csv.as_bytes()));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("CSV line 3:"), "{errs:?}");
        assert!(errs[1].starts_with("CSV line 4: price"), "{errs:?}");
    }

    #[test]
    fn duplicate_skus_and_wrong_headers_are_rejected() {
        let csv = format!("{HEADER}A,One,,1,,,,\nA,Two,,2,,,,\n");
        let errs = errors(parse_csv(csv.as_bytes()));
        assert!(
            errs[0].contains("CSV line 3") && errs[0].contains("CSV line 2"),
            "{errs:?}"
        );
        let errs = errors(parse_csv(b"sku,name,price\nA,B,1\n"));
        assert!(errs[0].contains("missing column description"), "{errs:?}");
    }

    #[test]
    fn prices_respect_the_currency_and_form() {
        for (price, currency, ok) in [
            ("49.90", "EUR", true),
            ("100", "JPY", true),
            ("100.5", "JPY", false),
            ("1.234", "KWD", true),
            ("1.2345", "", true),
            ("1.23456", "", false),
            ("-1", "", false),
            ("1e3", "", false),
            ("1.", "", false),
            ("12345678901", "", false),
        ] {
            let csv = format!("{HEADER}A,Thing,,{price},{currency},,,\n");
            assert_eq!(parse_csv(csv.as_bytes()).is_ok(), ok, "{price} {currency}");
        }
        let errs = errors(parse_csv(format!("{HEADER}A,Thing,,1,XYZ,,,\n").as_bytes()));
        assert!(errs[0].contains("ISO 4217"), "{errs:?}");
    }

    #[test]
    fn json_accepts_numbers_or_strings_and_names_items_from_one() {
        let json = br#"[{"sku":"A","name":"One","description":"","price":49.9,"currency":"USD","stock":3,"url":null,"image_url":null},
                        {"sku":"B","name":"Two","description":"x","price":"5.00","currency":null,"stock":null,"url":"https://x.example/b","image_url":""}]"#;
        let rows = parse_json(json).expect("valid");
        assert_eq!(
            rows[0].price,
            BigDecimal::from_str("49.9").expect("decimal")
        );
        assert_eq!(rows[1].url.as_deref(), Some("https://x.example/b"));
        let bad = br#"[{"sku":"A","name":"One","description":"","price":1},{"sku":"B","name":"","description":"","price":1},{"sku":"C","name":"x","price":1,"colour":"red"}]"#;
        let errs = errors(parse_json(bad));
        assert_eq!(errs.len(), 2);
        assert!(errs[0].starts_with("JSON item 2: name"), "{errs:?}");
        assert!(errs[1].starts_with("JSON item 3: unknown key"), "{errs:?}");
    }
}
