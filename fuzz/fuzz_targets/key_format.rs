//! The key format and checksum parser on any text: never a panic, never a well-formed verdict
//! for text longer than a key, and a key with one character changed fails its checksum.
#![no_main]

use keygate::model::{KeyFormat, KeyStyle};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [KeyFormat::Kg, KeyFormat::Drv, KeyFormat::Fo] {
        let style = KeyStyle {
            format,
            prefix: "kg".to_owned(),
        };
        if style.is_well_formed(text) {
            assert!(text.len() <= 128);
            assert!(style.looks_like_key(text));
        }
    }
    // A generated key, with one byte flipped at a position the input picks, is refused.
    if let Some(&pick) = data.first() {
        let style = KeyStyle::default();
        let key = style.generate();
        let mut bytes = key.clone().into_bytes();
        let i = 3 + usize::from(pick) % (bytes.len() - 3);
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).expect("ascii");
        assert!(style.is_well_formed(&key));
        assert!(typo == key || !style.is_well_formed(&typo));
    }
});
