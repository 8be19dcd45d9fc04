//! Where a prerequisite request goes: under the resource, or a path of its own built from the
//! resource's ID.
//!
//! Most prerequisites act on the resource itself (`POST {id}/deallocate`), but some live
//! elsewhere: a name held by a soft-deleted object is freed by a purge of the deleted record,
//! which Key Vault keeps beside the collection (`DELETE {vault}/deletedcertificates/{name}`) and
//! ARM keeps under the subscription
//! (`POST /subscriptions/{s}/providers/Microsoft.KeyVault/locations/{l}/deletedVaults/{name}/purge`).
//! A rule is written once per resource type, so such a path is a template whose placeholders
//! are filled from the ID of the resource the request wrote. Only the path is templated: the
//! request keeps the origin and `api-version` of the original, as every request of the engine's
//! own does.

use crate::ResourceId;

/// The longest template accepted; real ones are a few dozen bytes.
const MAX_LEN: usize = 1024;
/// The most placeholders one template may have.
const MAX_SLOTS: usize = 16;
/// The placeholders, as they are written (for messages).
const KNOWN: &str = "{id}, {parent}, {subscription}, {resource_group}, {namespace}, {type}, {name}";

/// A value taken from the resource's ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// The resource's path, `/subscriptions/…/certificates/c1`: only at the start.
    Id,
    /// The enclosing resource's path, `/subscriptions/…/vaults/kv1`: only at the start.
    Parent,
    /// The subscription ID.
    Subscription,
    /// The resource group's name.
    ResourceGroup,
    /// The provider namespace, `Microsoft.KeyVault`.
    Namespace,
    /// The last segment of the resource type, as in the path: `certificates`.
    Type,
    /// The resource's name, the last segment of its ID.
    Name,
}

impl Slot {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "id" => Self::Id,
            "parent" => Self::Parent,
            "subscription" => Self::Subscription,
            "resource_group" => Self::ResourceGroup,
            "namespace" => Self::Namespace,
            "type" => Self::Type,
            "name" => Self::Name,
            _ => return None,
        })
    }

    /// Whether the value is a whole path from the root (so it can only start a template).
    fn is_path(self) -> bool {
        matches!(self, Self::Id | Self::Parent)
    }

    /// The value for `id`, or why it has none.
    fn value(self, id: &ResourceId) -> Result<String, String> {
        let segments: Vec<&str> = id.path().split('/').filter(|s| !s.is_empty()).collect();
        // The segment after the last `providers`: resource types nest under their namespace.
        let after_providers = |offset: usize| {
            let at = segments
                .iter()
                .rposition(|s| s.eq_ignore_ascii_case("providers"))?;
            segments.get(at + offset).copied()
        };
        let value = match self {
            Self::Id => Some(id.path().to_owned()),
            Self::Parent => id.parent().map(|p| p.path().to_owned()),
            Self::Subscription => id.subscription().map(str::to_owned),
            Self::ResourceGroup => segments
                .iter()
                .position(|s| s.eq_ignore_ascii_case("resourceGroups"))
                .and_then(|at| segments.get(at + 1))
                .map(|s| (*s).to_owned()),
            Self::Namespace => after_providers(1).map(str::to_owned),
            // The type segment sits just before the name.
            Self::Type => after_providers(2)
                .and(segments.len().checked_sub(2).map(|at| segments[at]))
                .map(str::to_owned),
            Self::Name => id.name().map(str::to_owned),
        };
        value.ok_or_else(|| format!("the resource {id} has no {}", self.describe()))
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Id => "{id}",
            Self::Parent => "{parent}",
            Self::Subscription => "{subscription}",
            Self::ResourceGroup => "{resource_group}",
            Self::Namespace => "{namespace}",
            Self::Type => "{type}",
            Self::Name => "{name}",
        }
    }
}

/// One piece of a template.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Slot(Slot),
}

/// A path template taken apart.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Template<'a> {
    /// Whether it is a whole path from the root; else a path under the resource.
    absolute: bool,
    pieces: Vec<Piece<'a>>,
}

impl<'a> Template<'a> {
    /// Reads a path as a rule writes it; the error says what is wrong, for the policy's
    /// validation to put under the field's path.
    ///
    /// A path that starts at ARM's root (`/subscriptions/…`, `/providers/…`) or with `{id}` or
    /// `{parent}` (which are such paths) is the whole path; any other names a path under the
    /// resource, slashes around it ignored, as before templates existed.
    pub(crate) fn parse(path: &'a str) -> Result<Self, String> {
        if path.len() > MAX_LEN {
            return Err(format!("is longer than {MAX_LEN} bytes"));
        }
        let lower = path.to_ascii_lowercase();
        let absolute = ["/subscriptions/", "/providers/", "{id}", "{parent}"]
            .iter()
            .any(|root| lower.starts_with(root));
        let text = if absolute {
            path
        } else {
            path.trim_matches('/')
        };
        let pieces = pieces(text)?;
        if pieces
            .iter()
            .filter(|p| matches!(p, Piece::Slot(_)))
            .count()
            > MAX_SLOTS
        {
            return Err(format!("has more than {MAX_SLOTS} placeholders"));
        }
        for (i, piece) in pieces.iter().enumerate() {
            match piece {
                Piece::Slot(slot) if slot.is_path() && i > 0 => {
                    return Err(format!(
                        "{} is a whole path from the root: it can only start the path",
                        slot.describe()
                    ));
                }
                Piece::Text(text) => check_text(text)?,
                Piece::Slot(_) => {}
            }
        }
        Ok(Self { absolute, pieces })
    }

    /// Whether the path is a whole path from the root, not one under the resource.
    pub(crate) fn is_absolute(&self) -> bool {
        self.absolute
    }

    /// The path, its placeholders filled from `id`; an error names a placeholder the resource
    /// has no value for (a resource group's `{parent}` is its subscription, and a subscription
    /// has none).
    pub(crate) fn expand(&self, id: &ResourceId) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Slot(slot) => out.push_str(&slot.value(id)?),
            }
        }
        Ok(out)
    }
}

/// Splits `text` into literal text and placeholders.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let Some(open) = rest.find(['{', '}']) else {
            pieces.push(Piece::Text(rest));
            break;
        };
        if rest[open..].starts_with('}') {
            return Err("has a `}` that closes no placeholder".to_owned());
        }
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 1..];
        let close = after
            .find(['{', '}'])
            .filter(|&at| after[at..].starts_with('}'))
            .ok_or_else(|| "has a `{` that no `}` closes".to_owned())?;
        let name = &after[..close];
        let slot = Slot::parse(name).ok_or_else(|| {
            // The name is the user's own text: quoted, and cut short.
            let shown: String = name.chars().take(32).collect();
            format!("has an unknown placeholder {{{shown:?}}}; the known ones are {KNOWN}")
        })?;
        pieces.push(Piece::Slot(slot));
        rest = &after[close + 1..];
    }
    Ok(pieces)
}

/// Refuses literal text that would leave the path: a query, a fragment, a backslash, blanks,
/// control characters, and `.` or `..` segments (and so empty ones too).
fn check_text(text: &str) -> Result<(), String> {
    if let Some(c) = text
        .chars()
        .find(|c| matches!(c, '?' | '#' | '\\') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "has {c:?}, which a path template may not: the request keeps the original's \
             query, and its path stays a path"
        ));
    }
    if text.contains("//") {
        return Err("has an empty segment (`//`)".to_owned());
    }
    if text.split('/').any(|s| s == "." || s == "..") {
        return Err("has a `.` or `..` segment".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/kv1/certificates/c1";

    fn expand(template: &str, id: &str) -> Result<String, String> {
        Template::parse(template)?.expand(&ResourceId::parse(id).unwrap())
    }

    #[test]
    fn fills_placeholders_from_the_resource_id() {
        let cases = [
            (
                "{parent}/deleted{type}/{name}",
                "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/kv1/deletedcertificates/c1",
            ),
            ("{id}/recover", &format!("{CERT}/recover")),
            (
                "/subscriptions/{subscription}/providers/{namespace}/locations/westus/deletedVaults/{name}/purge",
                "/subscriptions/s1/providers/Microsoft.KeyVault/locations/westus/deletedVaults/c1/purge",
            ),
            (
                "/subscriptions/{subscription}/resourceGroups/{resource_group}",
                "/subscriptions/s1/resourceGroups/rg1",
            ),
            (
                "/providers/Microsoft.Sim/{type}",
                "/providers/Microsoft.Sim/certificates",
            ),
        ];
        for (template, expected) in cases {
            let parsed = Template::parse(template).unwrap();
            assert!(parsed.is_absolute(), "{template}");
            assert_eq!(
                expand(template, CERT).as_deref(),
                Ok(expected),
                "{template}"
            );
        }
    }

    #[test]
    fn other_paths_stay_under_the_resource_as_before() {
        for (path, expected) in [
            ("deallocate", "deallocate"),
            ("/deallocate/", "deallocate"),
            ("", ""),
            ("instanceView", "instanceView"),
            ("versions/{name}", "versions/c1"),
        ] {
            let parsed = Template::parse(path).unwrap();
            assert!(!parsed.is_absolute(), "{path}");
            assert_eq!(
                parsed.expand(&ResourceId::parse(CERT).unwrap()).as_deref(),
                Ok(expected)
            );
        }
    }

    #[test]
    fn refuses_what_would_not_be_a_path_of_the_resource() {
        for (template, why) in [
            (
                "{parent}/deleted{types}/{name}",
                "unknown placeholder {\"types\"}",
            ),
            ("{Name}", "unknown placeholder"),
            ("/subscriptions/{subscription", "no `}` closes"),
            ("/subscriptions/{sub{name}}", "no `}` closes"),
            ("/subscriptions/x}", "closes no placeholder"),
            (
                "/subscriptions/{subscription}/{parent}",
                "only start the path",
            ),
            ("x/{id}", "only start the path"),
            ("{parent}/../x", "`..` segment"),
            ("{parent}//x", "empty segment"),
            ("{parent}/x?api-version=1", "'?'"),
            ("{parent}/x#y", "'#'"),
            ("{parent}/a b", "' '"),
            ("{parent}\\x", "'\\\\'"),
        ] {
            let error = Template::parse(template).unwrap_err();
            assert!(error.contains(why), "{template}: {error}");
        }
        let long = format!("/subscriptions/{}", "a".repeat(MAX_LEN));
        assert!(Template::parse(&long).unwrap_err().contains("longer"));
        let many = format!("/subscriptions/{}", "{name}".repeat(MAX_SLOTS + 1));
        assert!(Template::parse(&many).unwrap_err().contains("placeholders"));
    }

    #[test]
    fn a_resource_without_the_part_a_placeholder_names_is_an_error_not_a_guess() {
        let group = "/subscriptions/s1/resourceGroups/rg1";
        assert_eq!(
            expand("{parent}/x", "/subscriptions/s1").unwrap_err(),
            "the resource /subscriptions/s1 has no {parent}"
        );
        assert!(
            expand("/subscriptions/{subscription}/{namespace}", group)
                .unwrap_err()
                .contains("{namespace}")
        );
        assert!(expand("/subscriptions/{type}", group).is_err());
        assert_eq!(
            expand("{parent}/x", group).as_deref(),
            Ok("/subscriptions/s1/x")
        );
    }
}
