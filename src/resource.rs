//! Which resource a request is about.
//!
//! Everything the crate does per resource — re-fetching its state, keying leases, counting conflicts
//! by type — needs one stable identity for "the thing this request writes". ARM gives it to us in the
//! path: `/subscriptions/{s}/resourceGroups/{g}/providers/{ns}/{type}/{name}[/{childType}/{childName}]*`,
//! possibly followed by an action (`/deallocate`). ARM compares segments case-insensitively, so the key
//! is lowercased; the original spelling is kept for URLs we build. Anything that is not an ARM path
//! falls back to `scheme://host:port/path` as its key, which is the best identity a generic REST API
//! offers.

use std::fmt;

use url::Url;

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
    /// `scheme://host[:port]` when known (parsed from a URL).
    origin: Option<String>,
    /// ARM: the resource path without action, original case. Other: the URL path.
    path: String,
    /// Lowercased identity used for comparison, leases and reports.
    key: String,
    arm: Option<Arm>,
    api_version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Arm {
    resource_type: String,
    action: Option<String>,
    /// Byte length of the parent's path within `path`, if there is a parent resource.
    parent_end: Option<usize>,
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
            let mut id = parse_arm_path(path).map_err(invalid)?;
            id.api_version = api_version_in(query);
            return Ok(id);
        }
        let url = Url::parse(input).map_err(|_| invalid("neither an ARM path nor a URL"))?;
        let mut id = parse_arm_path(url.path()).map_err(invalid)?;
        id.origin = Some(origin_of(&url));
        id.api_version = url.query().and_then(api_version_in);
        Ok(id)
    }

    /// The resource a request URL targets. Never fails: a URL whose path is not an ARM resource ID
    /// is keyed by `scheme://host:port/path`.
    pub fn from_url(url: &Url) -> Self {
        let api_version = url.query().and_then(api_version_in);
        let origin = origin_of(url);
        match parse_arm_path(url.path()) {
            Ok(mut id) => {
                id.origin = Some(origin);
                id.api_version = api_version;
                id
            }
            Err(_) => {
                let path = url.path().trim_end_matches('/').to_owned();
                Self {
                    key: format!("{origin}{path}"),
                    origin: Some(origin),
                    path,
                    arm: None,
                    api_version,
                }
            }
        }
    }

    /// The normalized identity: the lowercased ARM ID (host-independent, no action), or
    /// `scheme://host:port/path` for other APIs.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether this is an ARM resource ID.
    pub fn is_arm(&self) -> bool {
        self.arm.is_some()
    }

    /// `Microsoft.Compute/virtualMachines`, `Microsoft.Network/virtualNetworks/subnets`, … as
    /// spelled in the request; `None` for non-ARM resources.
    pub fn resource_type(&self) -> Option<&str> {
        self.arm.as_ref().map(|a| a.resource_type.as_str())
    }

    /// The trailing action (`deallocate`, `start`, …) the request invokes, if any.
    pub fn action(&self) -> Option<&str> {
        self.arm.as_ref().and_then(|a| a.action.as_deref())
    }

    /// The `api-version` the request carried, kept for re-fetches.
    pub fn api_version(&self) -> Option<&str> {
        self.api_version.as_deref()
    }

    /// The resource's own name (the last segment of the ID).
    pub fn name(&self) -> Option<&str> {
        self.arm.as_ref()?;
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
        let arm = self.arm.as_ref()?;
        let end = arm.parent_end?;
        let mut parent = parse_arm_path(&self.path[..end]).ok()?;
        parent.origin.clone_from(&self.origin);
        parent.api_version.clone_from(&self.api_version);
        Some(parent)
    }

    /// The URL a GET re-fetch of this resource goes to: the origin of `request` (never one named by
    /// the ID itself), the resource path with any action stripped, and this ID's `api-version`, else
    /// the request's. For non-ARM resources, `request` itself, since a REST resource is read where
    /// it is written.
    pub fn fetch_url(&self, request: &Url) -> Url {
        if self.arm.is_none() {
            return request.clone();
        }
        let api_version = self
            .api_version
            .clone()
            .or_else(|| request.query().and_then(api_version_in));
        let mut url = request.clone();
        url.set_path(&self.path);
        url.set_query(None);
        url.set_fragment(None);
        if let Some(v) = api_version {
            url.query_pairs_mut().append_pair("api-version", &v);
        }
        url
    }
}

impl fmt::Display for ResourceId {
    /// The ARM ID (original spelling, no action), or the key for non-ARM resources.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.arm.is_some() {
            f.write_str(&self.path)
        } else {
            f.write_str(&self.key)
        }
    }
}

impl std::str::FromStr for ResourceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

fn origin_of(url: &Url) -> String {
    use std::fmt::Write;
    let mut origin = String::with_capacity(url.as_str().len());
    origin.push_str(url.scheme());
    origin.push_str("://");
    origin.push_str(url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        let _ = write!(origin, ":{port}");
    }
    origin.make_ascii_lowercase();
    origin
}

fn api_version_in(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k.eq_ignore_ascii_case("api-version"))
        .map(|(_, v)| v.into_owned())
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

/// Path segments an ARM ID may have; real ones have a dozen or two. Longer paths are not ARM IDs
/// (and cannot make the parse allocate without bound).
const MAX_SEGMENTS: usize = 64;

/// Walks `/subscriptions/{s}[/resourceGroups/{g}][/providers/{ns}/{type}/{name}[/{type}/{name}]*]*[/{action}]`.
/// On the request path of every write, so it works on the stack and allocates only the strings
/// it returns.
fn parse_arm_path(path: &str) -> Result<ResourceId, &'static str> {
    let trimmed = path.trim_end_matches('/');
    let mut segs = [""; MAX_SEGMENTS];
    // Byte offset where segment k ends, so every ancestor is a prefix of the path.
    let mut seg_ends = [0usize; MAX_SEGMENTS];
    let mut n = 0;
    let mut at = 0;
    for seg in trimmed.split('/').skip(1) {
        if seg.is_empty() {
            return Err("empty path segment");
        }
        if n == MAX_SEGMENTS {
            return Err("too many path segments");
        }
        at += 1 + seg.len();
        segs[n] = seg;
        seg_ends[n] = at;
        n += 1;
    }
    let segs = &segs[..n];
    if n < 2 || !segs[0].eq_ignore_ascii_case("subscriptions") {
        return Err("does not start with /subscriptions/{id}");
    }

    /// What the innermost resource is, by segment index (its type is spelled at the end).
    enum Kind {
        Subscription,
        ResourceGroup,
        /// `providers/{ns}/…`: the namespace's index and the indices of its type segments.
        Provider {
            namespace: usize,
            types: usize,
        },
    }
    // The type segments of the current namespace, by index; a nested `providers` resets them.
    let mut type_at = [0usize; MAX_SEGMENTS / 2];
    let mut kind = Kind::Subscription;
    // Where the innermost resource and its parent end.
    let (mut resource_end, mut parent_end) = (seg_ends[1], None);
    let mut action = None;
    let mut i = 2;
    while i < n {
        let seg = segs[i];
        let has_name = i + 1 < n;
        let end = if i == 2 && seg.eq_ignore_ascii_case("resourceGroups") {
            if !has_name {
                return Err("resourceGroups without a name");
            }
            kind = Kind::ResourceGroup;
            i += 2;
            seg_ends[i - 1]
        } else if seg.eq_ignore_ascii_case("providers") {
            // `providers/{ns}/{type}/{name}`; a nested `providers` starts an extension resource.
            if i + 3 >= n {
                return Err("providers segment without namespace, type and name");
            }
            type_at[0] = i + 2;
            kind = Kind::Provider {
                namespace: i + 1,
                types: 1,
            };
            i += 4;
            seg_ends[i - 1]
        } else if !has_name {
            action = Some(seg.to_owned());
            i += 1;
            continue;
        } else if let Kind::Provider { types, .. } = &mut kind {
            type_at[*types] = i;
            *types += 1;
            i += 2;
            seg_ends[i - 1]
        } else {
            return Err("unexpected segments outside a provider namespace");
        };
        parent_end = Some(resource_end);
        resource_end = end;
    }
    let resource_type = match kind {
        Kind::Subscription => "Microsoft.Resources/subscriptions".to_owned(),
        Kind::ResourceGroup => "Microsoft.Resources/resourceGroups".to_owned(),
        Kind::Provider { namespace, types } => {
            let mut spelled = segs[namespace].to_owned();
            for &t in &type_at[..types] {
                spelled.push('/');
                spelled.push_str(segs[t]);
            }
            spelled
        }
    };
    let path = trimmed[..resource_end].to_owned();
    Ok(ResourceId {
        origin: None,
        key: path.to_ascii_lowercase(),
        path,
        arm: Some(Arm {
            resource_type,
            action,
            parent_end,
        }),
        api_version: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ResourceId {
        ResourceId::parse(s).unwrap()
    }

    #[test]
    fn vm_with_action() {
        let r = id(
            "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/vm1/deallocate?api-version=2024-07-01",
        );
        assert_eq!(r.resource_type(), Some("Microsoft.Compute/virtualMachines"));
        assert_eq!(r.action(), Some("deallocate"));
        assert_eq!(r.name(), Some("vm1"));
        assert_eq!(r.api_version(), Some("2024-07-01"));
        assert_eq!(
            r.key(),
            "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm1"
        );
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
        assert_eq!(
            r.resource_type(),
            Some("Microsoft.Network/virtualNetworks/subnets")
        );
        let p = r.parent().unwrap();
        assert_eq!(p.resource_type(), Some("Microsoft.Network/virtualNetworks"));
        assert_eq!(p.name(), Some("v"));
        let g = p.parent().unwrap();
        assert_eq!(
            g.resource_type(),
            Some("Microsoft.Resources/resourceGroups")
        );
        let s = g.parent().unwrap();
        assert_eq!(s.resource_type(), Some("Microsoft.Resources/subscriptions"));
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
        assert_eq!(r.resource_type(), Some("Microsoft.Authorization/locks"));
        assert_eq!(r.name(), Some("l"));
        assert_eq!(
            r.parent().unwrap().resource_type(),
            Some("Microsoft.Network/networkSecurityGroups")
        );
    }

    #[test]
    fn subscription_level_resource() {
        let r = id("/subscriptions/s/providers/Microsoft.Authorization/roleAssignments/ra1");
        assert_eq!(
            r.resource_type(),
            Some("Microsoft.Authorization/roleAssignments")
        );
        assert_eq!(r.parent().unwrap().key(), "/subscriptions/s");
    }

    #[test]
    fn rejects_non_arm() {
        for bad in [
            "",
            "/",
            "/subscriptions",
            "/subscriptions//resourceGroups/x",
            "/foo/bar",
            "/subscriptions/s/resourceGroups",
            "/subscriptions/s/providers/Microsoft.Compute",
            "not a url",
            "https://example.com/things/1",
        ] {
            assert!(
                matches!(ResourceId::parse(bad), Err(Error::InvalidResourceId { .. })),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn non_arm_url_falls_back_to_origin_and_path() {
        let url = Url::parse("HTTPS://Example.com:8443/things/1/?x=1").unwrap();
        let r = ResourceId::from_url(&url);
        assert!(!r.is_arm());
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
    fn long_input_error_is_truncated() {
        let long = format!("/x{}", "é".repeat(10_000));
        let Err(Error::InvalidResourceId { input, .. }) = ResourceId::parse(&long) else {
            panic!("expected an error");
        };
        assert!(input.len() < 300);
    }
}
