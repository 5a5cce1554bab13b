//! CSR handling (`trust::issue::parse_csr` on PEM, `parse_csr_der` on DER): size limit, PEM
//! decoding, DER parsing, the self-signature check and the SPIFFE ID in the URI SANs. The
//! same bytes go to both. Errors are expected; a panic is a bug.
#![no_main]

use causeway_trust::issue::{parse_csr, parse_csr_der};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateSigningRequestDer;

fuzz_target!(|data: &[u8]| {
    if let Ok(pem) = std::str::from_utf8(data) {
        match parse_csr(pem) {
            Ok(req) => {
                let _ = req.identity.to_string();
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    match parse_csr_der(&CertificateSigningRequestDer::from(data)) {
        Ok(req) => {
            let _ = req.identity.to_string();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
