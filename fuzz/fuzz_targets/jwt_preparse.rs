//! What keygate reads from a token before verifying it: the credential's shape, the JOSE
//! header, the `iss` it uses to choose the issuer. Never a panic on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let shaped = keygate::identity::credentials::looks_like_jwt(token);
    let _ = jsonwebtoken::decode_header(token);
    let issuer = keygate::identity::jwt::peek_issuer(token);
    if issuer.is_some() {
        assert_eq!(
            token.split('.').count(),
            3,
            "the issuer is read only from three parts"
        );
    }
    let _ = shaped;
});
