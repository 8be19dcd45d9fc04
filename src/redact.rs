//! What may be written down of a URL or an error: no query (a storage URL's query is its SAS
//! signature) and no userinfo. Logs, report notes and errors go through here.

use url::Url;

/// A URL as it may be written down: scheme, host, port and path.
pub(crate) fn redact(url: &Url) -> String {
    format!(
        "{}://{}{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default(),
        url.path()
    )
}

/// `text` (an error message) with the query of every URL in it cut, for the same reason.
pub(crate) fn scrub(text: &str) -> String {
    text.split(' ')
        .map(|word| match (word.find("://"), word.find('?')) {
            (Some(scheme), Some(query)) if query > scheme => format!("{}?…", &word[..query]),
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_query_or_userinfo_survives() {
        let url =
            Url::parse("https://user:pw@acct.blob.core.windows.net:444/c/b?sv=1&sig=S").unwrap();
        assert_eq!(redact(&url), "https://acct.blob.core.windows.net:444/c/b");
        assert_eq!(
            scrub("error sending request for url (https://h/c/b?sig=S) at x?y"),
            "error sending request for url (https://h/c/b?… at x?y"
        );
    }
}
