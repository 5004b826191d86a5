//! Meta ids are digit strings that can exceed 2^53; some payloads carry them as bare JSON
//! integers. [`IdString`] accepts either and keeps every digit (an integer goes through u64/i64,
//! never through f64).

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct IdString(pub String);

impl IdString {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IdString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IdString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id as a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IdString, E> {
                Ok(IdString(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<IdString, E> {
                Ok(IdString(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IdString, E> {
                Ok(IdString(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IdString, E> {
                Ok(IdString(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<IdString, E> {
                Err(E::custom(
                    "an id must be an integer or a string, not a float",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_ids_keep_every_digit() {
        let v: IdString = serde_json::from_str("27640875392278831").expect("int");
        assert_eq!(v.as_str(), "27640875392278831");
        let v: IdString = serde_json::from_str("\"17841400538867190\"").expect("str");
        assert_eq!(v.as_str(), "17841400538867190");
        assert!(serde_json::from_str::<IdString>("1.5").is_err());
    }
}
