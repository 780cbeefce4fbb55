//! Deserializers for the profile's scalar newtypes that fail inside serde's visitor, so that
//! serde_yaml reports the line and column of the offending value rather than of the
//! mapping around it. Each type module invokes them for its own types.

/// Deserializes a value written as a scalar through `TryFrom<String>`, raising the error
/// inside the visitor. serde's `try_from` attribute converts after the deserializer has
/// returned, and serde_yaml then blames the enclosing mapping; failing in `visit_*` makes it
/// report the line and column of the offending value itself.
macro_rules! deserialize_from_scalar_text {
    ($ty:ty, $expecting:literal) => {
        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct TextVisitor;

                impl ::serde::de::Visitor<'_> for TextVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut ::std::fmt::Formatter) -> ::std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: ::serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        <$ty>::try_from(v.to_string()).map_err(E::custom)
                    }
                    fn visit_i64<E: ::serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_u64<E: ::serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_f64<E: ::serde::de::Error>(self, v: f64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                }

                deserializer.deserialize_any(TextVisitor)
            }
        }
    };
}

/// As `deserialize_from_scalar_text`, for values written as integers (`TryFrom<i64>`).
macro_rules! deserialize_from_integer {
    ($ty:ty, $expecting:literal) => {
        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct IntegerVisitor;

                impl ::serde::de::Visitor<'_> for IntegerVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut ::std::fmt::Formatter) -> ::std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_i64<E: ::serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        <$ty>::try_from(v).map_err(E::custom)
                    }
                    fn visit_u64<E: ::serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        <$ty>::try_from(i64::try_from(v).unwrap_or(i64::MAX)).map_err(E::custom)
                    }
                }

                deserializer.deserialize_any(IntegerVisitor)
            }
        }
    };
}

pub(super) use deserialize_from_integer;
pub(super) use deserialize_from_scalar_text;
