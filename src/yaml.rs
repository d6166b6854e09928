//! The one place that reads and writes YAML, so the YAML crate (serde_yaml is deprecated upstream)
//! can be swapped without touching the rest of the crate.

use serde::{Serialize, de::DeserializeOwned};

pub use serde_yaml::Error;

pub fn to_string<T: Serialize>(value: &T) -> Result<String, Error> {
    serde_yaml::to_string(value)
}

pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    serde_yaml::from_str(text)
}
