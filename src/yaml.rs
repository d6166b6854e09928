//! The one place that reads and writes YAML, so the YAML crate (serde_yaml is deprecated upstream)
//! can be swapped without touching the rest of the crate.

use serde::{Serialize, de::DeserializeOwned};
use serde_yaml::Value;

pub use serde_yaml::Error;

pub fn to_string<T: Serialize>(value: &T) -> Result<String, Error> {
    serde_yaml::to_string(value)
}

/// As [`to_string`], with the keys of every mapping in ascending order, the way kubectl writes
/// YAML (Go types go through JSON maps, whose keys Go's YAML encoder sorts). Files handed to
/// people then look like the ones kubectl writes, whatever order a Rust type declares its fields
/// in.
pub fn to_string_sorted<T: Serialize>(value: &T) -> Result<String, Error> {
    serde_yaml::to_string(&sorted(serde_yaml::to_value(value)?))
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Mapping(mapping) => {
            let mut entries: Vec<(Value, Value)> = mapping
                .into_iter()
                .map(|(key, value)| (key, sorted(value)))
                .collect();
            entries.sort_by(|(a, _), (b, _)| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            Value::Mapping(entries.into_iter().collect())
        }
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    serde_yaml::from_str(text)
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    #[derive(Serialize)]
    struct Outer {
        zebra: u8,
        #[serde(rename = "apiVersion")]
        api_version: &'static str,
        items: Vec<Inner>,
    }

    #[derive(Serialize)]
    struct Inner {
        name: &'static str,
        details: Details,
    }

    #[derive(Serialize)]
    struct Details {
        server: &'static str,
        #[serde(rename = "certificate-authority-data")]
        ca: &'static str,
    }

    #[test]
    fn sorted_output_orders_keys_at_every_level_and_keeps_sequence_order() {
        let value = Outer {
            zebra: 1,
            api_version: "v1",
            items: vec![
                Inner {
                    name: "second-by-name-but-first-in-list",
                    details: Details {
                        server: "https://b",
                        ca: "Yg==",
                    },
                },
                Inner {
                    name: "a",
                    details: Details {
                        server: "https://a",
                        ca: "YQ==",
                    },
                },
            ],
        };
        assert_eq!(
            super::to_string_sorted(&value).unwrap(),
            "apiVersion: v1\n\
             items:\n\
             - details:\n    certificate-authority-data: Yg==\n    server: https://b\n  name: second-by-name-but-first-in-list\n\
             - details:\n    certificate-authority-data: YQ==\n    server: https://a\n  name: a\n\
             zebra: 1\n"
        );
        assert!(super::to_string(&value).unwrap().starts_with("zebra: 1\n"));
    }
}
