//! Which resource a request is about.
//!
//! Everything the crate does per resource — re-fetching its state, keying leases, counting conflicts
//! by type — needs one stable identity for "the thing this request writes". ARM gives it to us in the
//! path: `/subscriptions/{s}/resourceGroups/{g}/providers/{ns}/{type}/{name}[/{childType}/{childName}]*`,
//! possibly followed by an action (`/deallocate`). ARM compares segments case-insensitively, so the key
//! is lowercased; the original spelling is kept for URLs we build. Anything that is not an ARM path
//! falls back to `scheme://host:port/path` as its key, which is the best identity a generic REST API
//! offers.

use std::{
    borrow::Cow,
    fmt,
    sync::{Arc, OnceLock},
};

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
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ResourceId {
    /// Lowercased identity used for comparison, leases and reports; shared, not copied, by the
    /// lease, the transition clock and the journal of a request.
    key: Arc<str>,
    /// Every other part, back to back in one buffer (a write parses its URL, so this is one
    /// allocation rather than five): the origin (`scheme://host[:port]`, lowercased; empty when
    /// unknown), the path (ARM: without action, original case; other: the URL path), the
    /// resource type, the action, the `api-version`.
    text: Box<str>,
    /// Where the origin, path, resource type and action end in `text`; the API version runs to
    /// the end.
    ends: [usize; 4],
    /// ARM: the byte length of the parent's path within the path, if there is a parent.
    parent_end: Option<usize>,
    arm: bool,
    has_origin: bool,
    has_action: bool,
    has_api_version: bool,
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
            let shape = Shape::of(path).map_err(invalid)?;
            return Ok(Self::arm(None, path, &shape, api_version_in(query), None));
        }
        let url = Url::parse(input).map_err(|_| invalid("neither an ARM path nor a URL"))?;
        let shape = Shape::of(url.path()).map_err(invalid)?;
        let api_version = url.query().and_then(api_version_in);
        Ok(Self::arm(Some(&url), url.path(), &shape, api_version, None))
    }

    /// The resource a request URL targets. Never fails: a URL whose path is not an ARM resource ID
    /// is keyed by `scheme://host:port/path`.
    pub fn from_url(url: &Url) -> Self {
        let api_version = url.query().and_then(api_version_in);
        match Shape::of(url.path()) {
            Ok(shape) => Self::arm(Some(url), url.path(), &shape, api_version, None),
            Err(_) => {
                let path = url.path().trim_end_matches('/');
                let mut text = String::with_capacity(
                    origin_len(url) + path.len() + api_version.as_ref().map_or(0, |v| v.len()),
                );
                push_origin(&mut text, url);
                let origin = text.len();
                text.push_str(path);
                let key = Arc::from(&text[..]);
                let path_end = text.len();
                if let Some(v) = &api_version {
                    text.push_str(v);
                }
                Self {
                    key,
                    text: text.into_boxed_str(),
                    ends: [origin, path_end, path_end, path_end],
                    parent_end: None,
                    arm: false,
                    has_origin: true,
                    has_action: false,
                    has_api_version: api_version.is_some(),
                }
            }
        }
    }

    /// An ARM resource ID from its parsed `path`, with its key when it was made already.
    fn arm(
        url: Option<&Url>,
        path: &str,
        shape: &Shape<'_>,
        api_version: Option<Cow<'_, str>>,
        key: Option<Arc<str>>,
    ) -> Self {
        let path = &path[..shape.resource_end];
        let action = shape.action.unwrap_or("");
        let api = api_version.as_deref().unwrap_or("");
        let mut text = String::with_capacity(
            url.map_or(0, origin_len) + path.len() + shape.type_len() + action.len() + api.len(),
        );
        if let Some(url) = url {
            push_origin(&mut text, url);
        }
        let origin = text.len();
        text.push_str(path);
        let path_end = text.len();
        shape.push_type(&mut text);
        let type_end = text.len();
        text.push_str(action);
        let action_end = text.len();
        text.push_str(api);
        let key = key.unwrap_or_else(|| arm_key(path));
        Self {
            key,
            text: text.into_boxed_str(),
            ends: [origin, path_end, type_end, action_end],
            parent_end: shape.parent_end,
            arm: true,
            has_origin: url.is_some(),
            has_action: shape.action.is_some(),
            has_api_version: api_version.is_some(),
        }
    }

    /// The normalized identity: the lowercased ARM ID (host-independent, no action), or
    /// `scheme://host:port/path` for other APIs.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key, shared.
    pub(crate) fn shared_key(&self) -> &Arc<str> {
        &self.key
    }

    /// Whether this is an ARM resource ID.
    pub fn is_arm(&self) -> bool {
        self.arm
    }

    /// `Microsoft.Compute/virtualMachines`, `Microsoft.Network/virtualNetworks/subnets`, … as
    /// spelled in the request; `None` for non-ARM resources.
    pub fn resource_type(&self) -> Option<&str> {
        self.arm.then(|| &self.text[self.ends[1]..self.ends[2]])
    }

    /// The trailing action (`deallocate`, `start`, …) the request invokes, if any.
    pub fn action(&self) -> Option<&str> {
        self.has_action
            .then(|| &self.text[self.ends[2]..self.ends[3]])
    }

    /// The `api-version` the request carried, kept for re-fetches.
    pub fn api_version(&self) -> Option<&str> {
        self.has_api_version.then(|| &self.text[self.ends[3]..])
    }

    /// The resource's own name (the last segment of the ID).
    pub fn name(&self) -> Option<&str> {
        if !self.arm {
            return None;
        }
        self.path().rsplit('/').next()
    }

    /// The ARM resource path without action, in its original spelling (`/subscriptions/…`), or the
    /// URL path for non-ARM resources.
    pub fn path(&self) -> &str {
        &self.text[self.ends[0]..self.ends[1]]
    }

    /// `scheme://host[:port]`, when this ID was read from a URL.
    fn origin(&self) -> Option<&str> {
        self.has_origin.then(|| &self.text[..self.ends[0]])
    }

    /// The enclosing resource: a subnet's virtual network, a VM extension's VM, a resource's
    /// resource group, a resource group's subscription. `None` at the top or for non-ARM resources.
    pub fn parent(&self) -> Option<ResourceId> {
        let path = &self.path()[..self.parent_end?];
        let shape = Shape::of(path).ok()?;
        let mut parent = Self::arm(
            None,
            path,
            &shape,
            self.api_version().map(Cow::Borrowed),
            None,
        );
        if let Some(origin) = self.origin() {
            // Rebuilt with the origin in front; rare (only listed types lease their parent).
            let mut text = String::with_capacity(origin.len() + parent.text.len());
            text.push_str(origin);
            text.push_str(&parent.text);
            parent.text = text.into_boxed_str();
            for end in &mut parent.ends {
                *end += origin.len();
            }
            parent.has_origin = true;
        }
        Some(parent)
    }

    /// The URL a GET re-fetch of this resource goes to: the origin of `request` (never one named by
    /// the ID itself), the resource path with any action stripped, and this ID's `api-version`, else
    /// the request's. For non-ARM resources, `request` itself, since a REST resource is read where
    /// it is written.
    pub fn fetch_url(&self, request: &Url) -> Url {
        if !self.arm {
            return request.clone();
        }
        let api_version = self
            .api_version()
            .map(Cow::Borrowed)
            .or_else(|| request.query().and_then(api_version_in));
        let mut url = request.clone();
        url.set_path(self.path());
        url.set_query(None);
        url.set_fragment(None);
        if let Some(v) = api_version {
            url.query_pairs_mut().append_pair("api-version", &v);
        }
        url
    }
}

impl fmt::Debug for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceId")
            .field("key", &self.key())
            .field("origin", &self.origin())
            .field("path", &self.path())
            .field("resource_type", &self.resource_type())
            .field("action", &self.action())
            .field("api_version", &self.api_version())
            .finish()
    }
}

impl fmt::Display for ResourceId {
    /// The ARM ID (original spelling, no action), or the key for non-ARM resources.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.arm {
            f.write_str(self.path())
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

/// The key of an ARM resource whose path (without action) is `path`: the path, lowercased.
fn arm_key(path: &str) -> Arc<str> {
    let mut key: Arc<str> = Arc::from(path);
    // Just made, so not shared: lowercased in place, in its one allocation.
    if let Some(key) = Arc::get_mut(&mut key) {
        key.make_ascii_lowercase();
    }
    key
}

/// The resource a request writes, as far as a write that meets no conflict needs it: its key,
/// whether it is an ARM resource, and the length of its type. The whole [`ResourceId`] — the path
/// as spelled, the origin, the action, the `api-version`, all of which only re-fetches, reports,
/// merge bases and parent leases use — is made on first use: a write that meets no conflict
/// makes one allocation here, not two (about 1 % of a loopback round trip; see BENCHMARKS.md).
/// Small, since every write's future holds one.
pub(crate) struct Target<'u> {
    url: &'u Url,
    key: Arc<str>,
    /// The length of the resource type's string; `None` when the path is not an ARM resource ID
    /// (the ID is then made at once: its key is most of it).
    type_len: Option<usize>,
    id: OnceLock<ResourceId>,
}

impl<'u> Target<'u> {
    /// The resource `url` writes: [`ResourceId::from_url`], made lazily.
    pub(crate) fn of(url: &'u Url) -> Self {
        match Shape::of(url.path()) {
            Ok(shape) => Self {
                url,
                key: arm_key(&url.path()[..shape.resource_end]),
                type_len: Some(shape.type_len()),
                id: OnceLock::new(),
            },
            Err(_) => {
                let id = ResourceId::from_url(url);
                Self {
                    url,
                    key: id.key.clone(),
                    type_len: None,
                    id: OnceLock::from(id),
                }
            }
        }
    }

    /// [`ResourceId::key`].
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The key, shared: the lease, the journal and the ID made later hold the same allocation.
    pub(crate) fn shared_key(&self) -> &Arc<str> {
        &self.key
    }

    /// [`ResourceId::is_arm`].
    pub(crate) fn is_arm(&self) -> bool {
        self.type_len.is_some()
    }

    /// Whether the resource type is `resource_type`, compared as ARM compares it (ignoring case).
    /// The lengths first: they tell most types apart without making the ID, and this is asked of
    /// every type the policy lists, on every write. Types of equal length are compared on the
    /// ID, which a match needs anyway (to find the parent).
    pub(crate) fn is_type(&self, resource_type: &str) -> bool {
        self.type_len == Some(resource_type.len())
            && self
                .id()
                .resource_type()
                .is_some_and(|t| t.eq_ignore_ascii_case(resource_type))
    }

    /// The whole ID, made on first use.
    pub(crate) fn id(&self) -> &ResourceId {
        self.id.get_or_init(|| self.make())
    }

    /// The whole ID, made now if it was not used yet.
    pub(crate) fn into_id(mut self) -> ResourceId {
        match self.id.take() {
            Some(id) => id,
            None => self.make(),
        }
    }

    /// The ID of an ARM target (another has its ID from the start), its path parsed again: a
    /// shape is too large to keep in every write's future for the few that need it.
    fn make(&self) -> ResourceId {
        let path = self.url.path();
        match Shape::of(path) {
            Ok(shape) => {
                let api_version = self.url.query().and_then(api_version_in);
                let key = Some(self.key.clone());
                ResourceId::arm(Some(self.url), path, &shape, api_version, key)
            }
            // The same path parsed in `of`: never, but it would be a non-ARM ID.
            Err(_) => ResourceId::from_url(self.url),
        }
    }
}

/// `scheme://host[:port]`: the URL parser has already lowercased the scheme and a special
/// scheme's host, and left out a default port; the rest is lowercased here.
fn push_origin(out: &mut String, url: &Url) {
    let from = out.len();
    out.push_str(url.scheme());
    out.push_str("://");
    out.push_str(url.host_str().unwrap_or_default());
    out[from..].make_ascii_lowercase();
    if let Some(port) = url.port() {
        out.push(':');
        push_decimal(out, port);
    }
}

fn origin_len(url: &Url) -> usize {
    url.scheme().len()
        + 3
        + url.host_str().map_or(0, str::len)
        + url.port().map_or(0, |p| 1 + decimal_len(p))
}

/// `n` in decimal, without the formatting machinery (this runs on every write).
fn push_decimal(out: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let len = decimal_len(n);
    let mut rest = n;
    for d in digits[..len].iter_mut().rev() {
        // A digit: below 10.
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    for &d in &digits[..len] {
        out.push(char::from(d));
    }
}

fn decimal_len(n: u16) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

/// The `api-version` parameter of a query string, decoded only when it is encoded.
fn api_version_in(query: &str) -> Option<Cow<'_, str>> {
    const NAME: &[u8] = b"api-version=";
    let encoded = |s: &str| s.bytes().any(|b| b == b'%' || b == b'+');
    // What ARM clients send, on every write: the parameter first, as spelled here.
    if let Some(rest) = query.strip_prefix("api-version=") {
        let value = rest.split_once('&').map_or(rest, |(value, _)| value);
        if !encoded(value) {
            return Some(Cow::Borrowed(value));
        }
    }
    query.split('&').find_map(|pair| {
        // The common spelling first: a plain `api-version=…`.
        if let Some(value) = pair
            .as_bytes()
            .get(..NAME.len())
            .filter(|name| name.eq_ignore_ascii_case(NAME))
            .map(|_| &pair[NAME.len()..])
            .filter(|value| !encoded(value))
        {
            return Some(Cow::Borrowed(value));
        }
        if !encoded(pair) {
            return (pair.eq_ignore_ascii_case("api-version")).then_some(Cow::Borrowed(""));
        }
        let (k, v) = url::form_urlencoded::parse(pair.as_bytes()).next()?;
        k.eq_ignore_ascii_case("api-version").then_some(v)
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

/// Path segments an ARM ID may have; real ones have a dozen or two. Longer paths are not ARM IDs
/// (and cannot make the parse allocate without bound).
const MAX_SEGMENTS: usize = 64;

/// Bytes an ARM resource path may have; real ones have a few hundred.
const MAX_PATH: usize = u16::MAX as usize;

/// Whether `seg` is `keyword` (lowercase letters only) in any case. Setting the 0x20 bit maps
/// exactly an uppercase letter to its lowercase one, and leaves a lowercase one as it is; no
/// other byte lands on a lowercase letter — so this is `eq_ignore_ascii_case` for letters, in
/// one operation a byte.
fn is_keyword(seg: &str, keyword: &str) -> bool {
    seg.len() == keyword.len() && seg.bytes().zip(keyword.bytes()).all(|(a, k)| a | 0x20 == k)
}

/// What the innermost resource of an ARM path is.
enum Kind {
    Subscription,
    ResourceGroup,
    /// `providers/{ns}/…`: its type is the namespace and the type segments, joined by `/`.
    Provider,
}

/// The structure of an ARM path, found in one walk on the stack: nothing is allocated until the
/// [`ResourceId`] is built from it.
struct Shape<'a> {
    /// The path without trailing slashes.
    path: &'a str,
    /// Byte offset where segment k ends, so every ancestor is a prefix of the path. (Short
    /// offsets, not slices: the shape stays small, and this runs on every write.)
    ends: [u16; MAX_SEGMENTS],
    kind: Kind,
    /// The indices of the namespace, then of the type segments of the innermost provider.
    type_segs: [u8; MAX_SEGMENTS / 2],
    types: usize,
    /// Byte lengths of the resource's and its parent's paths.
    resource_end: usize,
    parent_end: Option<usize>,
    action: Option<&'a str>,
}

impl<'a> Shape<'a> {
    /// Walks `/subscriptions/{s}[/resourceGroups/{g}][/providers/{ns}/{type}/{name}[/{type}/{name}]*]*[/{action}]`.
    fn of(path: &'a str) -> Result<Self, &'static str> {
        let trimmed = path.trim_end_matches('/');
        let mut shape = Shape {
            path: trimmed,
            ends: [0; MAX_SEGMENTS],
            kind: Kind::Subscription,
            type_segs: [0; MAX_SEGMENTS / 2],
            types: 0,
            resource_end: 0,
            parent_end: None,
            action: None,
        };
        let bytes = trimmed.as_bytes();
        if bytes.first() != Some(&b'/') {
            return Err("does not start with /subscriptions/{id}");
        }
        if bytes.len() > MAX_PATH {
            return Err("path too long for an ARM resource ID");
        }
        let mut n = 0;
        let mut push = |from: usize, to: usize| {
            if from == to {
                return Err("empty path segment");
            }
            if n == MAX_SEGMENTS {
                return Err("too many path segments");
            }
            // Below MAX_PATH: fits.
            shape.ends[n] = to as u16;
            n += 1;
            Ok(())
        };
        // `/` is ASCII, so every cut is on a character boundary.
        let mut from = 1;
        for at in memchr::memchr_iter(b'/', &bytes[1..]) {
            push(from, at + 1)?;
            from = at + 2;
        }
        push(from, bytes.len())?;
        if n < 2 || !is_keyword(shape.seg(0), "subscriptions") {
            return Err("does not start with /subscriptions/{id}");
        }
        shape.resource_end = usize::from(shape.ends[1]);
        let mut i = 2;
        while i < n {
            let seg = shape.seg(i);
            let has_name = i + 1 < n;
            if i == 2 && is_keyword(seg, "resourcegroups") {
                if !has_name {
                    return Err("resourceGroups without a name");
                }
                shape.kind = Kind::ResourceGroup;
                i += 2;
            } else if is_keyword(seg, "providers") {
                // `providers/{ns}/{type}/{name}`; a nested `providers` starts an extension resource.
                if i + 3 >= n {
                    return Err("providers segment without namespace, type and name");
                }
                shape.kind = Kind::Provider;
                // Below MAX_SEGMENTS (64): fits a byte.
                shape.type_segs[0] = (i + 1) as u8;
                shape.type_segs[1] = (i + 2) as u8;
                shape.types = 2;
                i += 4;
            } else if !has_name {
                shape.action = Some(seg);
                i += 1;
                continue;
            } else if let Kind::Provider = shape.kind {
                shape.type_segs[shape.types] = i as u8;
                shape.types += 1;
                i += 2;
            } else {
                return Err("unexpected segments outside a provider namespace");
            }
            shape.parent_end = Some(shape.resource_end);
            shape.resource_end = usize::from(shape.ends[i - 1]);
        }
        Ok(shape)
    }

    /// Segment `k`, without its slashes.
    fn seg(&self, k: usize) -> &'a str {
        let from = if k == 0 {
            1
        } else {
            usize::from(self.ends[k - 1]) + 1
        };
        &self.path[from..usize::from(self.ends[k])]
    }

    fn type_segs(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.type_segs[..self.types]
            .iter()
            .map(|&k| self.seg(usize::from(k)))
    }

    fn type_len(&self) -> usize {
        match self.kind {
            Kind::Subscription => SUBSCRIPTIONS.len(),
            Kind::ResourceGroup => RESOURCE_GROUPS.len(),
            Kind::Provider => self.type_segs().map(|s| s.len() + 1).sum::<usize>() - 1,
        }
    }

    fn push_type(&self, out: &mut String) {
        match self.kind {
            Kind::Subscription => out.push_str(SUBSCRIPTIONS),
            Kind::ResourceGroup => out.push_str(RESOURCE_GROUPS),
            Kind::Provider => {
                for (k, seg) in self.type_segs().enumerate() {
                    if k > 0 {
                        out.push('/');
                    }
                    out.push_str(seg);
                }
            }
        }
    }
}

const SUBSCRIPTIONS: &str = "Microsoft.Resources/subscriptions";
const RESOURCE_GROUPS: &str = "Microsoft.Resources/resourceGroups";

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
    fn keywords_match_letters_in_either_case_and_nothing_else() {
        for k in b'a'..=b'z' {
            let keyword = char::from(k).to_string();
            for b in 0u8..=127 {
                let seg = char::from(b).to_string();
                assert_eq!(
                    is_keyword(&seg, &keyword),
                    seg.eq_ignore_ascii_case(&keyword),
                    "{b:#x} vs {keyword}"
                );
            }
        }
        assert!(is_keyword("ResourceGroups", "resourcegroups"));
        assert!(!is_keyword("resourcegroup", "resourcegroups"));
        assert!(!is_keyword("résourcegroups", "resourcegroups"));
    }

    /// Asserts that the lazy target of `url` is, in every respect the engine uses, the ID
    /// `ResourceId::from_url` makes, and that it makes nothing it was not asked for.
    fn assert_target_is_its_id(url: &Url, types: &[&str]) {
        let expected = ResourceId::from_url(url);
        let target = Target::of(url);
        assert_eq!(target.key(), expected.key(), "{url}");
        assert_eq!(target.is_arm(), expected.is_arm(), "{url}");
        // An ARM target has made no ID yet; another made it at once.
        assert_eq!(target.id.get().is_some(), !expected.is_arm(), "{url}");
        let mut types = types.to_vec();
        types.extend(expected.resource_type());
        let upper = expected.resource_type().map(str::to_ascii_uppercase);
        types.extend(upper.as_deref());
        // Of the same length, the last letter differing.
        let near = expected.resource_type().and_then(|t| {
            let mut near = t.to_owned();
            near.pop().filter(char::is_ascii)?;
            near.push('#');
            Some(near)
        });
        types.extend(near.as_deref());
        for t in types {
            let same = expected
                .resource_type()
                .is_some_and(|rt| rt.eq_ignore_ascii_case(t));
            assert_eq!(target.is_type(t), same, "{url} is {t:?}");
        }
        assert_eq!(target.id(), &expected, "{url}");
        assert_eq!(target.id().parent(), expected.parent(), "{url}");
        assert_eq!(Target::of(url).into_id(), expected, "{url}");
        // Made once, sharing the key the lease and the journal hold.
        assert!(Arc::ptr_eq(target.shared_key(), &target.id().key));
    }

    #[test]
    fn a_target_is_its_resource_id_made_lazily() {
        let types = [
            "Microsoft.Network/virtualNetworks/subnets",
            "microsoft.network/VIRTUALNETWORKS/subnets",
            "Microsoft.Network/virtualNetworks",
            "Microsoft.Network/virtualNetworks/subnets/x",
            // The length of `Microsoft.Network/virtualNetworks/subnets`, the type differing.
            "Microsoft.Network/virtualNetworkssubnets/",
            "Microsoft.Network/virtualNetworks/subnetz",
            "Microsoft.Network/virtualNetworks/subnet/",
            "Microsoft.Network/virtualNetworks/subnéts",
            "Microsoft.Compute/virtualMachines",
            "Microsoft.Compute/virtualMachinez",
            "Microsoft.Insights/diagnosticSettings",
            "Microsoft.Insights/diagnosticSettingz",
            "Microsoft.Resources/resourceGroups",
            "Microsoft.Resources/subscriptions",
            "",
        ];
        for url in [
            "https://management.azure.com/subscriptions/S/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/V/subnets/Default?api-version=2024-05-01",
            "https://management.azure.com/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/Providers/Microsoft.Network/virtualNetworks/V/subnets/Default/",
            "https://management.azure.com/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/vm/deallocate?x=1&api-version=2024-07-01",
            "https://management.azure.com/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/vm/providers/Microsoft.Insights/diagnosticSettings/d",
            "https://management.azure.com/subscriptions/S/resourceGroups/R%20G/providers/Microsoft.Web/sites/s%2Fx//",
            "https://management.azure.com/subscriptions/S/resourceGroups/RG/exportTemplate",
            "https://management.azure.com/subscriptions/S/resourceGroups/RG",
            "https://management.azure.com/subscriptions/S/register",
            "https://management.azure.com/subscriptions/S",
            "https://example.com/items/42?x=1",
            "https://management.azure.com/subscriptions//resourceGroups/rg",
        ] {
            assert_target_is_its_id(&Url::parse(url).unwrap(), &types);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3_000))]

        #[test]
        fn a_target_is_its_resource_id_for_any_path(
            path in "(/(subscriptions|SUBSCRIPTIONS)/s1(/(resourceGroups|RESOURCEGROUPS)/g)?)?((/(providers|Providers)/Microsoft\\.[A-Za-z]{1,3}(/[a-zA-Z]{1,4}/[a-zA-Z0-9é%.-]{1,4}){1,3})|/[a-zA-Zé0-9%.-]{0,5}){0,4}/{0,2}",
            query in "(\\?(api-version=[0-9-]{0,10}|x=1&API-Version=2)?)?",
            other in "[a-zA-Z./]{0,45}",
        ) {
            if let Ok(url) = Url::parse(&format!("https://management.azure.com{path}{query}")) {
                assert_target_is_its_id(&url, &[&other]);
            }
        }
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
            let url = Url::parse(&format!(
                "https://h/subscriptions/s/resourceGroups/g?{query}"
            ))
            .unwrap();
            let id = ResourceId::from_url(&url);
            assert_eq!(id.api_version(), expected, "{query:?}");
        }
    }

    #[test]
    fn parts_survive_one_buffer() {
        let url = Url::parse("HTTPS://Mgmt.Example:8443/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/VM/extensions/E/restart?api-version=1").unwrap();
        let id = ResourceId::from_url(&url);
        assert_eq!(
            id.path(),
            "/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/VM/extensions/E"
        );
        assert_eq!(
            id.resource_type(),
            Some("Microsoft.Compute/virtualMachines/extensions")
        );
        assert_eq!(id.action(), Some("restart"));
        assert_eq!(id.api_version(), Some("1"));
        assert_eq!(id.name(), Some("E"));
        let parent = id.parent().unwrap();
        assert_eq!(
            parent.path(),
            "/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/VM"
        );
        assert_eq!(parent.api_version(), Some("1"));
        assert_eq!(parent.action(), None);
        assert_eq!(parent.origin(), Some("https://mgmt.example:8443"));
        assert_eq!(
            parent.fetch_url(&url).as_str(),
            "https://mgmt.example:8443/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/VM?api-version=1"
        );
        // Two IDs of one resource, spelled differently, are the same key but not equal values.
        let other = ResourceId::parse(&id.key().to_uppercase()).unwrap();
        assert_eq!(other.key(), id.key());
        assert_ne!(other, id);
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
