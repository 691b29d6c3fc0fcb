//! Reading a manifest (spec §6, rules 8 and 9)
//!
//! The schema is the serde derive of [`super::Manifest`]: its field names, types, order and
//! optionality. This module is a `serde::Deserializer` over the parsed TOML that the derive
//! drives; it only turns what does not fit into the spec's typed errors, each naming the field
//! by its dotted path (`provenance.images.positives`, `relations[0].target`).
//!
//! Every struct's fields are visited in declaration order, present or not, so extraction stops at
//! the first field at fault in spec order, and an absent field is decided here: `None` for an
//! `Option`, empty for a list or a table, [`FormatError::MissingField`] for anything else.
//! The same walk, in [`Walk::Keys`] mode, visits everything the schema defines without ever
//! failing and collects the keys it does not define.

use std::cell::RefCell;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use toml::Value;

use super::rules::{dimension_max, dimension_out_of_range};
use super::{Category, DType};
use crate::error::quote;
use crate::FormatError;

/// The keys of the top-level `table` outside `[ext]` that `T`'s schema does not define, as
/// dotted paths
pub(super) fn unknown_keys<T: DeserializeOwned>(table: &Value) -> Vec<String> {
    let found = RefCell::default();
    // A keys walk never fails: whatever does not fit is read as a placeholder.
    let _ = T::deserialize(Field::root(table, &Walk::Keys(&found)));
    found.into_inner()
}

/// Reads `T` from the top-level `table`, failing with the first field at fault in schema order
pub(super) fn extract<T: DeserializeOwned>(table: &Value) -> Result<T, FormatError> {
    T::deserialize(Field::root(table, &Walk::Extract)).map_err(|Error(e)| e)
}

/// What a walk over the file does
enum Walk<'k> {
    /// Extracts the fields; the first one at fault is the error
    Extract,
    /// Visits every field the schema defines, records the keys it does not, never fails
    Keys(&'k RefCell<Vec<String>>),
}

/// The deserializer's error: a [`FormatError`] (a private type, so that `FormatError` itself does
/// not have to be a serde error)
#[derive(Debug)]
struct Error(FormatError);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    // Only reached through a `Deserialize` impl outside this walk's control (none in the schema
    // today): the message is kept.
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(FormatError::ManifestSyntax {
            message: msg.to_string(),
        })
    }
}

/// One field of the file: its value if present, and its dotted path
struct Field<'a> {
    value: Option<&'a Value>,
    path: String,
    walk: &'a Walk<'a>,
}

impl<'a> Field<'a> {
    /// The manifest's top-level table: a field with an empty path
    fn root(table: &'a Value, walk: &'a Walk<'a>) -> Field<'a> {
        Field {
            value: Some(table),
            path: String::new(),
            walk,
        }
    }

    fn lenient(&self) -> bool {
        matches!(self.walk, Walk::Keys(_))
    }

    fn missing(&self) -> Error {
        Error(FormatError::MissingField {
            field: self.path.clone(),
        })
    }

    fn wrong_type(&self, expected: &'static str, found: &Value) -> Error {
        Error(FormatError::FieldType {
            field: self.path.clone(),
            expected,
            found: found.type_str(),
        })
    }

    /// The value, or `Ok(None)` where a keys walk reads a placeholder instead
    fn typed<T>(
        &self,
        expected: &'static str,
        get: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, Error> {
        match self.value {
            Some(v) => match get(v) {
                Some(t) => Ok(Some(t)),
                None if self.lenient() => Ok(None),
                None => Err(self.wrong_type(expected, v)),
            },
            None if self.lenient() => Ok(None),
            None => Err(self.missing()),
        }
    }

    /// An unsigned integer of at most `max`; `None` where a keys walk reads a placeholder
    fn unsigned(&self, max: u64) -> Result<Option<u64>, Error> {
        let Some(i) = self.typed("integer", Value::as_integer)? else {
            return Ok(None);
        };
        match u64::try_from(i) {
            Ok(u) if u <= max => Ok(Some(u)),
            _ if self.lenient() => Ok(None),
            // Dimensions report their own range (rule 9: negative `k`, `d`, … are out of range).
            _ => Err(Error(match dimension_max(&self.path) {
                Some(dim_max) => dimension_out_of_range(&self.path, dim_max, i128::from(i)),
                None => FormatError::InvalidField {
                    field: self.path.clone(),
                    expected: format!("an integer in 0..={max}"),
                    found: i.to_string(),
                },
            })),
        }
    }

    fn child(&self, value: Option<&'a Value>, path: String) -> Field<'a> {
        Field {
            value,
            path,
            walk: self.walk,
        }
    }
}

/// Visits the fields of a struct in declaration order; in a keys walk, records the table's
/// keys outside `fields` first
fn visit_table<'de, 'a, V: Visitor<'de>>(
    table: &'a toml::Table,
    fields: &'static [&'static str],
    path: String,
    walk: &'a Walk<'a>,
    visitor: V,
) -> Result<V::Value, Error> {
    let prefix = if path.is_empty() { path } else { path + "." };
    if let Walk::Keys(found) = walk {
        found.borrow_mut().extend(
            table
                .keys()
                .filter(|k| !fields.contains(&k.as_str()))
                .map(|k| format!("{prefix}{}", k.escape_debug())),
        );
    }
    visitor.visit_map(StructFields {
        table,
        fields,
        prefix,
        next: 0,
        walk,
    })
}

impl<'de, 'a> de::Deserializer<'de> for Field<'a> {
    type Error = Error;

    // Only `[ext]`'s free-form values come here: TOML's own value deserializer reads them.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Some(v) => v
                .clone()
                .deserialize_any(visitor)
                .map_err(de::Error::custom),
            None if self.lenient() => visitor.visit_unit(),
            None => Err(self.missing()),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let s = self.typed("string", Value::as_str)?;
        visitor.visit_str(s.unwrap_or_default())
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let u = self.unsigned(u64::from(u32::MAX))?.unwrap_or_default();
        visitor.visit_u32(u as u32)
    }

    // TOML integers are signed 64-bit, so that is the range of a u64 field.
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let u = self.unsigned(i64::MAX as u64)?.unwrap_or_default();
        visitor.visit_u64(u)
    }

    /// A float; an integer is accepted where it converts exactly
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let f = self.typed("float", |v| match v {
            Value::Float(f) => Some(*f),
            Value::Integer(i) if i.unsigned_abs() <= 1 << 53 => Some(*i as f64),
            _ => None,
        })?;
        visitor.visit_f64(f.unwrap_or_default())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Some(_) => visitor.visit_some(self),
            None => visitor.visit_none(),
        }
    }

    /// An array; absent is empty
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let items = match self.value {
            None => &[][..],
            Some(_) => self
                .typed("array", Value::as_array)?
                .map_or(&[][..], |a| a.as_slice()),
        };
        visitor.visit_seq(Items {
            items,
            next: 0,
            parent: self,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        static EMPTY: std::sync::LazyLock<toml::Table> = std::sync::LazyLock::new(toml::Table::new);
        let table = self.typed("table", Value::as_table)?.unwrap_or(&EMPTY);
        visit_table(table, fields, self.path, self.walk, visitor)
    }

    /// A free-form table (`[ext]`); absent is empty
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let table = match self.value {
            None => None,
            Some(_) => self.typed("table", Value::as_table)?,
        };
        Value::Table(table.cloned().unwrap_or_default())
            .deserialize_map(visitor)
            .map_err(de::Error::custom)
    }

    /// A string naming one of `variants`; the two enums of the schema have their own errors
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let found = self.typed("string", Value::as_str)?;
        let known = found.filter(|s| variants.contains(s));
        if let Some(s) = known.or(self.lenient().then_some(variants[0])) {
            return visitor.visit_enum(s.into_deserializer());
        }
        let s = found.unwrap_or_default();
        Err(Error(
            match name {
                "Category" => s.parse::<Category>().err(),
                "DType" => s.parse::<DType>().err(),
                _ => None,
            }
            .unwrap_or_else(|| FormatError::InvalidField {
                field: self.path.clone(),
                expected: format!("one of {}", variants.join(", ")),
                found: quote(s),
            }),
        ))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u128 f32 char bytes byte_buf unit unit_struct
        newtype_struct tuple tuple_struct identifier ignored_any
    }
}

/// A struct's fields, every one in declaration order, present or not
struct StructFields<'a> {
    table: &'a toml::Table,
    fields: &'static [&'static str],
    prefix: String,
    next: usize,
    walk: &'a Walk<'a>,
}

impl<'de> MapAccess<'de> for StructFields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.fields.get(self.next) {
            Some(&key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let key = self.fields[self.next];
        self.next += 1;
        seed.deserialize(Field {
            value: self.table.get(key),
            path: format!("{}{key}", self.prefix),
            walk: self.walk,
        })
    }
}

/// An array's items, named `path[i]`
struct Items<'a> {
    items: &'a [Value],
    next: usize,
    parent: Field<'a>,
}

impl<'de> SeqAccess<'de> for Items<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(item) = self.items.get(self.next) else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.parent.path, self.next);
        self.next += 1;
        seed.deserialize(self.parent.child(Some(item), path))
            .map(Some)
    }
}
