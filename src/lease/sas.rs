//! Account SAS tokens signed with Azurite's development key, so tests and local runs of
//! [`BlobLeases`](super::BlobLeases) need no Azure account and no extra tooling.
//!
//! The key is Microsoft's published emulator key, not a secret; nothing here is for real accounts.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::blob::API_VERSION;

/// The Azurite emulator's well-known development account and key (published by Microsoft; not a
/// secret). Only for [`dev_sas_container_url`].
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// **For local testing with Azurite only.** The URL of `container` under `blob_endpoint`
/// (Azurite's is `http://127.0.0.1:10000/devstoreaccount1`) with an account SAS signed by the
/// emulator's published development key, valid for 24 hours, allowing everything
/// [`BlobLeases`](super::BlobLeases) does, including
/// [`create_container`](super::BlobLeases::create_container).
///
/// ```
/// let url = reqwest_conflict::lease::dev_sas_container_url(
///     "http://127.0.0.1:10000/devstoreaccount1",
///     "leases",
/// );
/// assert!(url.starts_with("http://127.0.0.1:10000/devstoreaccount1/leases?sv="));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "azure-blob")))]
pub fn dev_sas_container_url(blob_endpoint: &str, container: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let expiry = iso8601(now + 24 * 3600);
    let (permissions, services, resource_types) = ("rwdlac", "b", "sco");
    // Account SAS string-to-sign for versions 2020-12-06 and later: account, permissions,
    // services, resource types, start, expiry, IP, protocol, version, encryption scope, and a
    // final newline.
    let string_to_sign = format!(
        "{DEV_ACCOUNT}\n{permissions}\n{services}\n{resource_types}\n\n{expiry}\n\n\n{API_VERSION}\n\n"
    );
    let key = BASE64.decode(DEV_KEY).expect("the dev key is valid base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    let signature = BASE64.encode(mac.finalize().into_bytes());
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", API_VERSION)
        .append_pair("ss", services)
        .append_pair("srt", resource_types)
        .append_pair("sp", permissions)
        .append_pair("se", &expiry)
        .append_pair("sig", &signature)
        .finish();
    format!(
        "{}/{container}?{query}",
        blob_endpoint.trim_end_matches('/')
    )
}

/// `secs` since the Unix epoch as `YYYY-MM-DDThh:mm:ssZ` (UTC), the form SAS tokens use.
fn iso8601(secs: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_formats_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
