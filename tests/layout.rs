//! The layout's promises, checked on the source: the modules of `src/lib.rs` are listed from the
//! bottom of the import graph to the top, and each may import only modules listed before it (so
//! the graph has no cycles); every module file says what it owns in a `//!` comment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules in the order `lib.rs` declares them.
fn layers() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and main.rs).
fn owner(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.trim_end_matches(".rs").to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// The top-level modules a file names through `crate::`, outside its unit tests.
fn imports(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

fn all_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files
}

#[test]
fn every_module_imports_only_modules_below_it() {
    let layers = layers();
    assert!(layers.len() > 10, "lib.rs lists the modules: {layers:?}");
    let rank = |m: &str| layers.iter().position(|l| l == m);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in all_files() {
        let Some(module) = owner(&file) else { continue };
        let own = rank(&module).unwrap_or_else(|| panic!("{module} is not declared in lib.rs"));
        let text = std::fs::read_to_string(&file).expect("readable source");
        for imported in imports(&text) {
            if imported == module {
                continue;
            }
            match rank(&imported) {
                Some(r) if r < own => {}
                _ => wrong
                    .entry(format!("{}", file.strip_prefix(src()).unwrap().display()))
                    .or_default()
                    .push(imported),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "these files import modules at or above their own layer (see the order in src/lib.rs); \
         move the shared piece down instead:\n{wrong:#?}"
    );
}

#[test]
fn every_module_file_says_what_it_owns() {
    let missing: Vec<String> = all_files()
        .into_iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("readable source");
            !text.trim_start().starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! comment: {missing:?}"
    );
}

#[test]
fn every_folder_says_what_it_may_import() {
    let mut silent = Vec::new();
    for module in layers() {
        let folder = src().join(&module).join("mod.rs");
        if folder.exists() {
            let text = std::fs::read_to_string(&folder).expect("readable source");
            let doc: String = text
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .collect::<Vec<_>>()
                .join("\n");
            if !doc.contains("import") {
                silent.push(module);
            }
        }
    }
    assert!(
        silent.is_empty(),
        "these folders' //! comments do not say what they may import: {silent:?}"
    );
}

#[test]
fn the_checker_sees_imports() {
    // The checks above are only as good as this parser.
    let found = imports("use crate::store::Store;\nfn f() { crate::clock::now_millis(); }\n#[cfg(test)]\nuse crate::proxy::X;");
    assert_eq!(found, ["store", "clock"]);
}
