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

/// `text` (an error message) with the query and the userinfo of every URL in it cut, for the
/// same reason.
pub(crate) fn scrub(text: &str) -> String {
    text.split(' ')
        .map(scrub_word)
        .collect::<Vec<_>>()
        .join(" ")
}

fn scrub_word(word: &str) -> String {
    let Some(scheme) = word.find("://") else {
        return word.to_owned();
    };
    let (head, rest) = word.split_at(scheme + 3);
    let authority = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = match rest[..authority].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    match rest.find('?') {
        Some(query) => format!("{head}{}?…", &rest[..query]),
        None => format!("{head}{rest}"),
    }
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
        assert_eq!(
            scrub("for url (https://u:pw@h:1/c?sig=S) and http://tok@h2"),
            "for url (https://h:1/c?… and http://h2"
        );
    }
}
