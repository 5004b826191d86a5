//! Closed sets of words stored in `text` columns (each listed by a CHECK constraint) as Rust
//! enums. The mapping happens at the diesel boundary, so the columns and the stored words stay
//! as the migrations made them.

/// A stored word that no variant of the enum names (a row written by something newer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a known {kind}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

/// Declares an enum whose variants are stored as the given words, with `as_str`, `FromStr`,
/// `Display` and diesel's `Text` mapping for Postgres.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, diesel::expression::AsExpression,
            diesel::deserialize::FromSqlRow,
        )]
        #[diesel(sql_type = diesel::sql_types::Text)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order the migration's CHECK constraint lists them.
            pub const ALL: &[$name] = &[$($name::$variant),+];

            /// The word stored in the column.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::text_enum::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::text_enum::UnknownValue {
                        kind: stringify!($name),
                        value: other.to_owned(),
                    }),
                }
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
                    self.as_str(),
                    out,
                )
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                Ok(std::str::from_utf8(value.as_bytes())?.parse()?)
            }
        }
    };
}

pub(crate) use text_enum;

#[cfg(test)]
pub(crate) mod tests {
    /// Every migration's `up.sql`, in order.
    const MIGRATIONS: &[&str] = &[
        include_str!("../migrations/2026-11-26-000001_foundation/up.sql"),
        include_str!("../migrations/2026-11-26-000002_meta_callbacks/up.sql"),
        include_str!("../migrations/2026-11-26-000003_catalog_search/up.sql"),
        include_str!("../migrations/2026-11-26-000004_hot_updates/up.sql"),
    ];

    /// Fails unless some migration constrains `column` to exactly `words`, in that order (the
    /// enum and the CHECK constraint must list the same values).
    pub(crate) fn assert_checked(column: &str, words: &[&str]) {
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let check = format!("CHECK ({column} IN ({}))", quoted.join(", "));
        assert!(
            MIGRATIONS.iter().any(|m| m.contains(&check)),
            "no migration has `{check}`: the enum and the column's CHECK constraint differ"
        );
    }

    #[test]
    fn an_unknown_word_is_an_error_naming_the_type() {
        let e = "archived"
            .parse::<crate::outbound::OutboundStatus>()
            .expect_err("not a status");
        assert_eq!(e.to_string(), "\"archived\" is not a known OutboundStatus");
    }
}
