//! Serves `docs/openapi.json` without its indentation: the document stays
//! indented in the repository, for people, and the binary carries it
//! compact (39 KB instead of 66 KB), written to the build's `OUT_DIR`.

use std::path::Path;

fn main() {
    let source = "docs/openapi.json";
    println!("cargo::rerun-if-changed={source}");
    let text = std::fs::read_to_string(source).expect("docs/openapi.json is readable");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(Path::new(&out).join("openapi.json"), compact(&text))
        .expect("OUT_DIR is writable");
}

/// JSON without the whitespace between its tokens (what is inside a string
/// is kept as it is), ending in a newline as every JSON body does.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !c.is_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out.push('\n');
    out
}
