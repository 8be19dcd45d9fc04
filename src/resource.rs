//! Which resource a request is about.
//!
//! Everything the crate does per resource — re-fetching its state, keying leases, counting conflicts
//! by type — needs one stable identity for "the thing this request writes". ARM gives it to us in the
//! path: `/subscriptions/{s}/resourceGroups/{g}/providers/{ns}/{type}/{name}[/{childType}/{childName}]*`,
//! possibly followed by an action (`/deallocate`). ARM compares segments case-insensitively, so the key
//! is lowercased; the original spelling is kept for URLs we build. Anything that is not an ARM path
//! falls back to `scheme://host:port/path` as its key, which is the best identity a generic REST API
//! offers.

use std::{fmt, sync::Arc};

use url::{Position, Url};

use crate::Error;

/// The identity of the resource a request targets.
///
/// ```
/// use reqwest_conflict::ResourceId;
///
/// let id = ResourceId::parse(
///     "https://management.azure.com/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default?api-version=2024-05-01",
/// )?;
/// assert_eq!(id.resource_type(), Some("Microsoft.Network/virtualNetworks/subnets"));
/// assert_eq!(id.name(), Some("default"));
/// assert_eq!(id.api_version(), Some("2024-05-01"));
/// assert_eq!(
///     id.parent().unwrap().key(),
///     "/subscriptions/s1/resourcegroups/rg/providers/microsoft.network/virtualnetworks/vnet"
/// );
/// # Ok::<(), reqwest_conflict::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceId {
    /// The identity used for comparison, leases and reports: the lowercased ARM path without its
    /// action, or `scheme://host[:port]/path` for other APIs. Shared by the lease, the transition
    /// clock and the journal of a request.
    key: Arc<str>,
    /// ARM: the resource path without action or trailing slash, as spelled. Other: the URL path
    /// without trailing slash.
    path: String,
    /// The ARM resource type as spelled; `None` exactly when the ID is not an ARM ID.
    resource_type: Option<String>,
    action: Option<String>,
    api_version: Option<String>,
}

impl ResourceId {
    /// Parses an ARM resource ID (`/subscriptions/…`) or an absolute URL whose path is one.
    ///
    /// Fails with [`Error::InvalidResourceId`] when the input is not an ARM resource path.
    /// Use [`ResourceId::from_url`] for URLs that may not be ARM.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let invalid = |reason: &'static str| Error::InvalidResourceId {
            input: truncate(input),
            reason,
        };
        if input.starts_with('/') {
            let (path, query) = input.split_once('?').unwrap_or((input, ""));
            let arm = ArmPath::parse(path).map_err(invalid)?;
            return Ok(Self::arm(arm, api_version_in(query)));
        }
        let url = Url::parse(input).map_err(|_| invalid("neither an ARM path nor a URL"))?;
        let arm = ArmPath::parse(url.path()).map_err(invalid)?;
        let api_version = url.query().and_then(api_version_in);
        Ok(Self::arm(arm, api_version))
    }

    /// The resource a request URL targets. Never fails: a URL whose path is not an ARM resource ID
    /// is keyed by `scheme://host:port/path`.
    ///
    /// ```
    /// use reqwest_conflict::ResourceId;
    ///
    /// let vm = url::Url::parse("https://management.azure.com/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1/deallocate?api-version=2024-07-01")?;
    /// let id = ResourceId::from_url(&vm);
    /// assert!(id.is_arm());
    /// assert_eq!(id.action(), Some("deallocate"));
    /// assert_eq!(id.key(), "/subscriptions/s1/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm1");
    ///
    /// let item = url::Url::parse("https://api.example.com/items/42")?;
    /// let id = ResourceId::from_url(&item);
    /// assert!(!id.is_arm());
    /// assert_eq!(id.key(), "https://api.example.com/items/42");
    /// # Ok::<(), url::ParseError>(())
    /// ```
    pub fn from_url(url: &Url) -> Self {
        let api_version = url.query().and_then(api_version_in);
        match ArmPath::parse(url.path()) {
            Ok(arm) => Self::arm(arm, api_version),
            Err(_) => {
                let path = url.path().trim_end_matches('/').to_owned();
                Self {
                    key: Arc::from(origin(url) + &path),
                    path,
                    resource_type: None,
                    action: None,
                    api_version,
                }
            }
        }
    }

    /// An ARM ID: its key is its path, lowercased.
    fn arm(arm: ArmPath<'_>, api_version: Option<String>) -> Self {
        Self {
            key: lowercase(arm.path),
            path: arm.path.to_owned(),
            resource_type: Some(arm.resource_type),
            action: arm.action.map(str::to_owned),
            api_version,
        }
    }

    /// The normalized identity: the lowercased ARM ID (host-independent, no action), or
    /// `scheme://host:port/path` for other APIs.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key, shared: the lease and the journal hold it without copying it.
    pub(crate) fn shared_key(&self) -> &Arc<str> {
        &self.key
    }

    /// Whether this is an ARM resource ID.
    pub fn is_arm(&self) -> bool {
        self.resource_type.is_some()
    }

    /// Whether the resource type is `resource_type`, compared as ARM compares it (ignoring ASCII
    /// case). Never true for non-ARM resources.
    pub(crate) fn is_type(&self, resource_type: &str) -> bool {
        self.resource_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(resource_type))
    }

    /// `Microsoft.Compute/virtualMachines`, `Microsoft.Network/virtualNetworks/subnets`, … as
    /// spelled in the request; `None` for non-ARM resources.
    pub fn resource_type(&self) -> Option<&str> {
        self.resource_type.as_deref()
    }

    /// The trailing action (`deallocate`, `start`, …) the request invokes, if any.
    pub fn action(&self) -> Option<&str> {
        self.action.as_deref()
    }

    /// The `api-version` the request carried, kept for re-fetches.
    pub fn api_version(&self) -> Option<&str> {
        self.api_version.as_deref()
    }

    /// The subscription an ARM ID is in (as spelled); `None` for non-ARM resources.
    pub fn subscription(&self) -> Option<&str> {
        if !self.is_arm() {
            return None;
        }
        self.path.split('/').nth(2).filter(|s| !s.is_empty())
    }

    /// The resource's own name (the last segment of the ID).
    pub fn name(&self) -> Option<&str> {
        if !self.is_arm() {
            return None;
        }
        self.path.rsplit('/').next()
    }

    /// The ARM resource path without action, in its original spelling (`/subscriptions/…`), or the
    /// URL path for non-ARM resources.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The enclosing resource: a subnet's virtual network, a VM extension's VM, a resource's
    /// resource group, a resource group's subscription. `None` at the top or for non-ARM resources.
    pub fn parent(&self) -> Option<ResourceId> {
        // The parent's path is a prefix of ours; parsing ours again says where it ends (and
        // fails for a non-ARM path).
        let parent_len = ArmPath::parse(&self.path).ok()?.parent_len?;
        let parent = ArmPath::parse(&self.path[..parent_len]).ok()?;
        Some(Self::arm(parent, self.api_version.clone()))
    }

    /// The URL a GET re-fetch of this resource goes to: the origin of `request` (never one named by
    /// the ID itself), the resource path with any action stripped, and this ID's `api-version`, else
    /// the request's. For non-ARM resources, `request` itself, since a REST resource is read where
    /// it is written.
    pub fn fetch_url(&self, request: &Url) -> Url {
        if !self.is_arm() {
            return request.clone();
        }
        let api_version = self
            .api_version
            .clone()
            .or_else(|| request.query().and_then(api_version_in));
        let mut url = request.clone();
        url.set_query(None);
        url.set_fragment(None);
        // The request's own path, already in the URL, unless it names an action to strip.
        if url.path() != self.path {
            url.set_path(&self.path);
        }
        if let Some(v) = api_version {
            url.query_pairs_mut().append_pair("api-version", &v);
        }
        url
    }
}

impl fmt::Display for ResourceId {
    /// The ARM ID (original spelling, no action), or the key for non-ARM resources.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_arm() { &self.path } else { &self.key })
    }
}

impl std::str::FromStr for ResourceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

/// `scheme://host[:port]`, lowercased, without any userinfo; the URL parser has already left
/// out a default port.
fn origin(url: &Url) -> String {
    let scheme = &url[..Position::BeforeUsername];
    let host_and_port = &url[Position::BeforeHost..Position::AfterPort];
    let mut origin = [scheme, host_and_port].concat();
    origin.make_ascii_lowercase();
    origin
}

/// `text` lowercased, as a shared key.
fn lowercase(text: &str) -> Arc<str> {
    let mut key: Arc<str> = Arc::from(text);
    // Just made, so not shared yet: lowercased in place.
    if let Some(key) = Arc::get_mut(&mut key) {
        key.make_ascii_lowercase();
    }
    key
}

/// The `api-version` parameter of a query string: its name in any case, its value decoded. A
/// bare `api-version` is an empty one.
fn api_version_in(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !pair.bytes().any(|b| b == b'%' || b == b'+') {
            return name
                .eq_ignore_ascii_case("api-version")
                .then(|| value.to_owned());
        }
        // Encoded: decoded the way forms are.
        let (name, value) = url::form_urlencoded::parse(pair.as_bytes()).next()?;
        name.eq_ignore_ascii_case("api-version")
            .then(|| value.into_owned())
    })
}

/// Error messages quote the input; a hostile one must not make them huge.
fn truncate(input: &str) -> String {
    const MAX: usize = 256;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}

/// Path segments an ARM ID may have; real ones have a dozen or two. Longer paths are not ARM IDs,
/// so a hostile path cannot make the parse do unbounded work.
const MAX_SEGMENTS: usize = 64;

/// Bytes an ARM resource path may have; real ones have a few hundred.
const MAX_PATH: usize = u16::MAX as usize;

/// An ARM path taken apart.
struct ArmPath<'a> {
    /// The resource's path: the input without trailing slashes and without the action.
    path: &'a str,
    /// The byte length of the parent's path, a prefix of `path`; `None` for a subscription.
    parent_len: Option<usize>,
    /// The namespace and type segments, joined by `/`, as spelled.
    resource_type: String,
    action: Option<&'a str>,
}

impl<'a> ArmPath<'a> {
    /// Reads `/subscriptions/{s}[/resourceGroups/{g}][/providers/{ns}/{type}/{name}[/{type}/{name}]*]*[/{action}]`.
    /// Keywords match in any case; a nested `providers` starts an extension resource, whose
    /// parent is the resource it extends.
    fn parse(path: &'a str) -> Result<Self, &'static str> {
        const NOT_A_SUBSCRIPTION: &str = "does not start with /subscriptions/{id}";
        let path = path.trim_end_matches('/');
        let Some(rest) = path.strip_prefix('/') else {
            return Err(NOT_A_SUBSCRIPTION);
        };
        if path.len() > MAX_PATH {
            return Err("path too long for an ARM resource ID");
        }
        // Cut at each `/` (one byte in UTF-8, so every cut is on a character boundary); one
        // segment past the limit is enough to reject the path.
        let mut segments = Vec::with_capacity(16);
        let mut left = rest;
        while segments.len() <= MAX_SEGMENTS {
            let Some(at) = left.bytes().position(|b| b == b'/') else {
                segments.push(left);
                break;
            };
            segments.push(&left[..at]);
            left = &left[at + 1..];
        }
        if segments.contains(&"") {
            return Err("empty path segment");
        }
        if segments.len() > MAX_SEGMENTS {
            return Err("too many path segments");
        }
        let n = segments.len();
        if n < 2 || !segments[0].eq_ignore_ascii_case("subscriptions") {
            return Err(NOT_A_SUBSCRIPTION);
        }

        // Rewritten as the walk goes deeper; one buffer large enough for real types.
        let mut resource_type = String::with_capacity(64);
        resource_type.push_str("Microsoft.Resources/subscriptions");
        let mut in_provider = false;
        // How many segments the resource's path, and its parent's, have.
        let mut resource = 2;
        let mut parent = None;
        let mut action = None;
        let mut i = 2;
        while i < n {
            let segment = segments[i];
            let has_name = i + 1 < n;
            if i == 2 && segment.eq_ignore_ascii_case("resourceGroups") {
                if !has_name {
                    return Err("resourceGroups without a name");
                }
                resource_type.clear();
                resource_type.push_str("Microsoft.Resources/resourceGroups");
                i += 2;
            } else if segment.eq_ignore_ascii_case("providers") {
                if i + 3 >= n {
                    return Err("providers segment without namespace, type and name");
                }
                resource_type.clear();
                resource_type.push_str(segments[i + 1]);
                resource_type.push('/');
                resource_type.push_str(segments[i + 2]);
                in_provider = true;
                i += 4;
            } else if !has_name {
                // A last segment without a name: the action, not part of the resource.
                action = Some(segment);
                break;
            } else if in_provider {
                resource_type.push('/');
                resource_type.push_str(segment);
                i += 2;
            } else {
                return Err("unexpected segments outside a provider namespace");
            }
            parent = Some(resource);
            resource = i;
        }

        // Each segment is one byte of `/` and its text.
        let len = |segments: &[&str]| segments.iter().map(|s| 1 + s.len()).sum::<usize>();
        Ok(Self {
            path: &path[..len(&segments[..resource])],
            parent_len: parent.map(|p| len(&segments[..p])),
            resource_type,
            action,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ResourceId {
        ResourceId::parse(s).unwrap()
    }

    /// The resource type of an ARM ID.
    fn ty(id: &ResourceId) -> &str {
        id.resource_type().unwrap()
    }

    #[test]
    fn vm_with_action() {
        let r = id(
            "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/vm1/deallocate?api-version=2024-07-01",
        );
        assert_eq!(ty(&r), "Microsoft.Compute/virtualMachines");
        assert_eq!(r.action(), Some("deallocate"));
        assert_eq!(r.name(), Some("vm1"));
        assert_eq!(r.api_version(), Some("2024-07-01"));
        let key =
            "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm1";
        assert_eq!(r.key(), key);
        assert_eq!(
            r.parent().unwrap().key(),
            "/subscriptions/s/resourcegroups/rg"
        );
    }

    #[test]
    fn child_resource_parent_chain() {
        let r = id(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/a",
        );
        assert_eq!(ty(&r), "Microsoft.Network/virtualNetworks/subnets");
        let p = r.parent().unwrap();
        assert_eq!(ty(&p), "Microsoft.Network/virtualNetworks");
        assert_eq!(p.name(), Some("v"));
        let g = p.parent().unwrap();
        assert_eq!(ty(&g), "Microsoft.Resources/resourceGroups");
        let s = g.parent().unwrap();
        assert_eq!(ty(&s), "Microsoft.Resources/subscriptions");
        assert!(s.parent().is_none());
    }

    #[test]
    fn case_insensitive_keys_match() {
        let a = id(
            "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Network/networkSecurityGroups/NSG",
        );
        let b = id(
            "/SUBSCRIPTIONS/s/resourcegroups/rg/PROVIDERS/microsoft.network/networksecuritygroups/nsg/",
        );
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn extension_resource() {
        let r = id(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/n/providers/Microsoft.Authorization/locks/l",
        );
        assert_eq!(ty(&r), "Microsoft.Authorization/locks");
        assert_eq!(r.name(), Some("l"));
        assert_eq!(
            ty(&r.parent().unwrap()),
            "Microsoft.Network/networkSecurityGroups"
        );
    }

    #[test]
    fn subscription_level_resource() {
        let r = id("/subscriptions/s/providers/Microsoft.Authorization/roleAssignments/ra1");
        assert_eq!(ty(&r), "Microsoft.Authorization/roleAssignments");
        assert_eq!(r.parent().unwrap().key(), "/subscriptions/s");
    }

    #[test]
    fn rejects_non_arm() {
        const NOT_ARM: &str = "does not start with /subscriptions/{id}";
        // The most segments an ARM ID may have.
        let deep = format!("/subscriptions/s/providers/N/t/n{}", "/c/n".repeat(29));
        assert_eq!(ty(&id(&deep)), format!("N/t{}", "/c".repeat(29)));
        for (bad, why) in [
            ("", "neither an ARM path nor a URL"),
            ("/", NOT_ARM),
            ("/subscriptions", NOT_ARM),
            ("/subscriptions//resourceGroups/x", "empty path segment"),
            ("/foo/bar", NOT_ARM),
            (
                "/subscriptions/s/resourceGroups",
                "resourceGroups without a name",
            ),
            (
                "/subscriptions/s/providers/Microsoft.Compute",
                "providers segment without namespace, type and name",
            ),
            (
                "/subscriptions/s/resourceGroups/g/x/y",
                "unexpected segments outside a provider namespace",
            ),
            ("not a url", "neither an ARM path nor a URL"),
            ("https://example.com/things/1", NOT_ARM),
            (&format!("{deep}/a"), "too many path segments"),
            (
                &format!("/subscriptions/{}", "s".repeat(MAX_PATH)),
                "path too long for an ARM resource ID",
            ),
        ] {
            let Err(Error::InvalidResourceId { reason, .. }) = ResourceId::parse(bad) else {
                panic!("{bad:?} parsed");
            };
            assert_eq!(reason, why, "{bad:?}");
        }
    }

    #[test]
    fn non_arm_url_falls_back_to_origin_and_path() {
        let url = Url::parse("HTTPS://Example.com:8443/things/1/?x=1").unwrap();
        let r = ResourceId::from_url(&url);
        assert!(!r.is_arm());
        assert!(!r.is_type(""));
        assert_eq!(r.key(), "https://example.com:8443/things/1");
        assert_eq!(r.fetch_url(&url), url);
    }

    #[test]
    fn fetch_url_strips_action_keeps_api_version() {
        let url = Url::parse("https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm/start?api-version=2024-07-01&x=y").unwrap();
        let r = ResourceId::from_url(&url);
        assert_eq!(
            r.fetch_url(&url).as_str(),
            "https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm?api-version=2024-07-01"
        );
    }

    #[test]
    fn display_round_trips() {
        let r = id(
            "https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/app/slots/stage/restart",
        );
        let back = id(&r.to_string());
        assert_eq!(back.key(), r.key());
        assert_eq!(back.resource_type(), r.resource_type());
    }

    #[test]
    fn api_version_spellings() {
        for (query, expected) in [
            ("api-version=2024-07-01", Some("2024-07-01")),
            ("api-version=2024-07-01&x=1", Some("2024-07-01")),
            ("api-version=&x=1", Some("")),
            ("api-version=a%2Db&x=1", Some("a-b")),
            ("x=1&API-Version=2024-07-01&y=2", Some("2024-07-01")),
            ("api%2Dversion=2024%2D07%2D01", Some("2024-07-01")),
            ("api-version=a+b", Some("a b")),
            ("api-version", Some("")),
            ("api-versions=1&x=api-version", None),
            ("", None),
        ] {
            let url = format!("https://h/subscriptions/s/resourceGroups/g?{query}");
            let id = ResourceId::from_url(&Url::parse(&url).unwrap());
            assert_eq!(id.api_version(), expected, "{query:?}");
        }
    }

    #[test]
    fn every_part_survives_into_the_parent() {
        let url = Url::parse("HTTPS://Mgmt.Example:8443/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/VM/extensions/E/restart?api-version=1").unwrap();
        let id = ResourceId::from_url(&url);
        let vm = "/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/VM";
        assert_eq!(id.path(), format!("{vm}/extensions/E"));
        assert_eq!(ty(&id), "Microsoft.Compute/virtualMachines/extensions");
        assert!(id.is_type("microsoft.compute/VIRTUALMACHINES/extensions"));
        assert!(!id.is_type("Microsoft.Compute/virtualMachines"));
        assert_eq!(id.action(), Some("restart"));
        assert_eq!(id.api_version(), Some("1"));
        assert_eq!(id.name(), Some("E"));
        let parent = id.parent().unwrap();
        assert_eq!(parent.path(), vm);
        assert_eq!(parent.api_version(), Some("1"));
        assert_eq!(parent.action(), None);
        let fetch = format!("https://mgmt.example:8443{vm}?api-version=1");
        assert_eq!(parent.fetch_url(&url).as_str(), fetch);
        // Two IDs of one resource, spelled differently, are the same key but not equal values.
        let other = ResourceId::parse(&id.key().to_uppercase()).unwrap();
        assert_eq!(other.key(), id.key());
        assert_ne!(other, id);
        assert!(!Arc::ptr_eq(other.shared_key(), id.shared_key()));
        // An ARM ID names the same resource on any host (a re-fetch goes to the request's own).
        let elsewhere = Url::parse(&format!("https://other.example{vm}")).unwrap();
        assert_eq!(
            ResourceId::from_url(&elsewhere),
            ResourceId::parse(vm).unwrap()
        );
    }

    #[test]
    fn long_input_error_is_truncated() {
        let long = format!("/x{}", "é".repeat(10_000));
        let Err(Error::InvalidResourceId { input, .. }) = ResourceId::parse(&long) else {
            panic!("expected an error");
        };
        assert!(input.len() < 300);
    }
}
