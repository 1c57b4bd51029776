//! The OpenAPI document, `docs/openapi.json`, as the oracle of every HTTP
//! exchange the tests make: [`check`] finds the operation of a request (path
//! template and method), and holds the answer to the document: its status
//! must be one the operation lists, its headers those the response declares
//! (required ones present, each value valid, none undeclared but `Date`,
//! `Content-Type`, `Content-Length` and `Connection`), its `Content-Type` one
//! of the response's media types and its body valid against that schema
//! (JSON Schema 2020-12, by the `jsonschema` crate). A request that breaks
//! the document (a parameter or body its schema refuses) must be answered
//! 4xx. What holds on every path (a method a path does not list: 405 with
//! `Allow` naming exactly the methods it lists; a path not listed: 404; any
//! request: the statuses every operation lists) is read from the document
//! too, as its `info.description` states it.
//!
//! `support`'s connections call it for every answer they read (see
//! `support::Tap`), so whichever file a test sits in, its exchanges are
//! checked. With `REGISTRO_CONTRACT_LOG=FILE` each check appends a line
//! (`checked METHOD TEMPLATE STATUS`, or `FAILED WHY`) to FILE.
//!
//! The tests here: the document passes a real OpenAPI validator
//! (`openapi-spec-validator`), the server serves it, and a deliberate
//! mismatch fails, both in [`check`] and through a connection of `support`.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};

/// The document, as the server compiles it in.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// One exchange as a test saw it.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The method and target, if the request could be parsed.
    pub request: Option<(String, String)>,
    /// The request body, de-chunked; `None` when it was not sent in full
    /// (the server may answer before it: 413, 417, a stop).
    pub request_body: Option<Vec<u8>>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as received (none for HEAD).
    pub body: Vec<u8>,
}

/// The document, compiled for checking.
pub struct Contract {
    doc: Value,
    /// Path templates, split into segments.
    paths: Vec<(String, Vec<Segment>)>,
    /// The statuses every operation lists: what may answer any request,
    /// even one that could not be parsed.
    any: BTreeSet<String>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

/// Path parameters by name, percent-decoded (`None`: not decodable).
type Params = Vec<(String, Option<String>)>;

enum Segment {
    Literal(String),
    Param(String),
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
/// Headers of every answer, which the document does not repeat.
const STANDARD_HEADERS: [&str; 4] = ["date", "content-type", "content-length", "connection"];

/// The document of the repository, compiled once.
pub fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| {
        Contract::new(serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON"))
    })
}

/// Checks `exchange` against the repository's document; logs the outcome
/// where `REGISTRO_CONTRACT_LOG` says.
pub fn check(exchange: &Exchange) -> Result<(), String> {
    let outcome = contract().check(exchange);
    if let Some(path) = std::env::var_os("REGISTRO_CONTRACT_LOG") {
        let line = match &outcome {
            Ok(what) => format!("{what}\n"),
            Err(e) => format!("FAILED {}\n", e.lines().next().unwrap_or("")),
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
    outcome.map(|_| ())
}

/// `~` and `/` escaped for a JSON pointer.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A JSON pointer as a URI fragment: percent-encoded but for RFC 3986's
/// unreserved characters and `/`.
fn fragment(pointer: &str) -> String {
    pointer
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Percent-decoding as the server does it (`None` for a bad escape or
/// bytes that are not UTF-8).
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A parameter or header value as the JSON its schema describes: a whole
/// number where the schema wants an integer and the text is one.
fn coerce(text: &str, schema: &Value) -> Value {
    if schema["type"] == "integer" {
        if let Ok(n) = text.parse::<u64>() {
            return json!(n);
        }
        if let Ok(n) = text.parse::<i64>() {
            return json!(n);
        }
    }
    Value::String(text.to_string())
}

impl Contract {
    pub fn new(doc: Value) -> Contract {
        let mut paths = Vec::new();
        let mut any: Option<BTreeSet<String>> = None;
        if let Some(items) = doc["paths"].as_object() {
            for (template, item) in items {
                let segments = template
                    .split('/')
                    .skip(1)
                    .map(
                        |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => Segment::Param(name.to_string()),
                            None => Segment::Literal(s.to_string()),
                        },
                    )
                    .collect();
                paths.push((template.clone(), segments));
                for method in METHODS {
                    if let Some(responses) = item[method]["responses"].as_object() {
                        let listed: BTreeSet<String> = responses.keys().cloned().collect();
                        any = Some(match any {
                            None => listed,
                            Some(any) => any.intersection(&listed).cloned().collect(),
                        });
                    }
                }
            }
        }
        Contract {
            doc,
            paths,
            any: any.unwrap_or_default(),
            validators: Mutex::new(HashMap::new()),
        }
    }

    /// What `pointer` names, following `$ref`s; with the pointer it ends at.
    fn resolve(&self, pointer: &str) -> Result<(String, &Value), String> {
        let mut pointer = pointer.to_string();
        for _ in 0..8 {
            let value = self
                .doc
                .pointer(&pointer)
                .ok_or_else(|| format!("the document has nothing at {pointer}"))?;
            match value.get("$ref").and_then(Value::as_str) {
                Some(r) => pointer = r.trim_start_matches('#').to_string(),
                None => return Ok((pointer, value)),
            }
        }
        Err(format!("a cycle of $ref at {pointer}"))
    }

    /// Validates `instance` against the schema at `pointer`.
    fn validate(&self, pointer: &str, instance: &Value) -> Result<(), String> {
        let validator = {
            let mut cache = self.validators.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(pointer) {
                Some(v) => Arc::clone(v),
                None => {
                    // The whole document is the root, so that its
                    // `#/components/...` references resolve.
                    let mut root = self.doc.clone();
                    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
                    root["$ref"] = json!(format!("#{}", fragment(pointer)));
                    // A schema that does not compile is the document's
                    // fault, never the exchange's.
                    let v = Arc::new(
                        jsonschema::options()
                            .with_draft(jsonschema::Draft::Draft202012)
                            .build(&root)
                            .unwrap_or_else(|e| {
                                panic!("the schema at {pointer} does not compile: {e}")
                            }),
                    );
                    cache.insert(pointer.to_string(), Arc::clone(&v));
                    v
                }
            }
        };
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .take(3)
            .map(|e| format!("{e} (at {:?})", e.instance_path().to_string()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{} against {pointer}", errors.join("; ")))
        }
    }

    /// The template a path matches, and its parameters percent-decoded
    /// (`None` for one that cannot be decoded).
    fn find(&self, path: &str) -> Option<(&str, Params)> {
        let path = match path.strip_prefix("/registro/1.0/") {
            Some(_) if path.len() > "/registro/1.0/".len() => {
                path.strip_suffix('/').unwrap_or(path)
            }
            _ => path,
        };
        let given: Vec<&str> = path.split('/').skip(1).collect();
        'templates: for (template, segments) in &self.paths {
            if segments.len() != given.len() {
                continue;
            }
            let mut params = Vec::new();
            for (segment, raw) in segments.iter().zip(&given) {
                match segment {
                    Segment::Literal(l) if decode(raw).as_deref() == Some(l) => {}
                    Segment::Literal(_) => continue 'templates,
                    Segment::Param(_) if raw.is_empty() => continue 'templates,
                    Segment::Param(name) => params.push((name.clone(), decode(raw))),
                }
            }
            return Some((template, params));
        }
        None
    }

    /// `Ok` with a line for the log, or what breaks the document.
    pub fn check(&self, ex: &Exchange) -> Result<String, String> {
        let said = |e: String| {
            let (method, target) = ex.request.clone().unwrap_or_default();
            format!(
                "{e}\nin the exchange {method} {target} -> {} {:?} {:.300}",
                ex.status,
                ex.headers,
                String::from_utf8_lossy(&ex.body)
            )
        };
        self.check_inner(ex).map_err(said)
    }

    fn check_inner(&self, ex: &Exchange) -> Result<String, String> {
        if (100..200).contains(&ex.status) {
            return Ok(format!("interim {}", ex.status));
        }
        let Some((method, target)) = &ex.request else {
            self.generic(ex, &[])?;
            return Ok(format!("checked (unparsed request) {}", ex.status));
        };
        // The absolute form (`http://host/path`) names the same path.
        let target = match target.split_once("://") {
            Some((scheme, rest)) if !scheme.contains('/') => {
                rest.find('/').map_or("/", |i| &rest[i..])
            }
            _ => target.as_str(),
        };
        let (path, query) = {
            let t = target.split('#').next().unwrap_or("");
            t.split_once('?').unwrap_or((t, ""))
        };
        let Some((template, params)) = self.find(path) else {
            self.generic(ex, &[("404", "/components/responses/NotFound")])?;
            return Ok(format!("checked {method} (no route) {}", ex.status));
        };
        let item = &self.doc["paths"][template];
        let key = method.to_ascii_lowercase();
        let op = (method.as_str() == method.to_ascii_uppercase()
            && METHODS.contains(&key.as_str()))
        .then(|| item.get(&key))
        .flatten();
        let Some(op) = op else {
            self.generic(ex, &[("405", "/components/responses/MethodNotAllowed")])?;
            if ex.status == 405 {
                let listed: Vec<String> = METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| m.to_ascii_uppercase())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let allow = header(&ex.headers, "allow").unwrap_or("");
                if allow != listed.join(", ") {
                    return Err(format!(
                        "Allow: {allow:?}, but {template} lists {}",
                        listed.join(", ")
                    ));
                }
            }
            return Ok(format!(
                "checked {method} {template} (not listed) {}",
                ex.status
            ));
        };
        let op_pointer = format!("/paths/{}/{key}", escape(template));
        let broken = self.request_breaks(&op_pointer, op, &params, query, ex)?;
        let status = ex.status.to_string();
        if op["responses"].get(&status).is_none() {
            return Err(format!(
                "{method} {template} answered {status}, which the document does not list for it"
            ));
        }
        if let Some(why) = broken {
            if !(400..500).contains(&ex.status) {
                return Err(format!(
                    "the request breaks the document ({why}) but was answered {status}"
                ));
            }
        }
        self.response(
            &format!("{op_pointer}/responses/{status}"),
            ex,
            method == "HEAD",
        )?;
        Ok(format!("checked {method} {template} {status}"))
    }

    /// An answer outside an operation: one of `own` (status, response), an
    /// access refusal, or a status every operation lists.
    fn generic(&self, ex: &Exchange, own: &[(&str, &str)]) -> Result<(), String> {
        let status = ex.status.to_string();
        let head = matches!(&ex.request, Some((m, _)) if m == "HEAD");
        if let Some((_, pointer)) = own.iter().find(|(s, _)| *s == status) {
            return self.response(pointer, ex, head);
        }
        let pointer = match status.as_str() {
            "401" => "/components/responses/Unauthorized".to_string(),
            "403" => "/components/responses/Forbidden".to_string(),
            s if self.any.contains(s) => {
                // As the first operation lists it (they all do).
                let (template, _) = &self.paths[0];
                let item = &self.doc["paths"][template];
                let method = METHODS
                    .iter()
                    .find(|m| item.get(**m).is_some())
                    .ok_or("a path without operations")?;
                format!("/paths/{}/{method}/responses/{s}", escape(template))
            }
            _ => {
                return Err(format!(
                "status {status} is not one the document allows here (expected {} or one of {:?})",
                own.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", "),
                self.any
            ))
            }
        };
        self.response(&pointer, ex, head)
    }

    /// Whether the request breaks the operation's parameters or body, and how.
    fn request_breaks(
        &self,
        op_pointer: &str,
        op: &Value,
        path_params: &Params,
        query: &str,
        ex: &Exchange,
    ) -> Result<Option<String>, String> {
        let pairs: Vec<(&str, Option<String>)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k, decode(&v.replace('+', " ")))
            })
            .collect();
        for k in 0..op["parameters"].as_array().map_or(0, Vec::len) {
            let (pointer, param) = self.resolve(&format!("{op_pointer}/parameters/{k}"))?;
            let name = param["name"].as_str().unwrap_or("");
            let schema_pointer = format!("{pointer}/schema");
            let (_, schema) = self.resolve(&schema_pointer)?;
            let value = match param["in"].as_str() {
                Some("path") => match path_params.iter().find(|(n, _)| n == name) {
                    Some((_, Some(v))) => coerce(v, schema),
                    _ => return Ok(Some(format!("path parameter {name} cannot be decoded"))),
                },
                Some("query") => {
                    let values: Vec<&Option<String>> = pairs
                        .iter()
                        .filter(|(k, _)| *k == name)
                        .map(|(_, v)| v)
                        .collect();
                    if values.iter().any(|v| v.is_none()) {
                        return Ok(Some(format!("query parameter {name} cannot be decoded")));
                    }
                    let values: Vec<&str> = values.iter().filter_map(|v| v.as_deref()).collect();
                    if values.is_empty() {
                        if param["required"] == true {
                            return Ok(Some(format!("query parameter {name} is missing")));
                        }
                        continue;
                    }
                    if schema["type"] == "array" {
                        let (_, items) = self.resolve(&format!("{schema_pointer}/items"))?;
                        let items: Vec<Value> = if param["explode"] == false {
                            values
                                .iter()
                                .flat_map(|v| v.split(','))
                                .map(|v| coerce(v, items))
                                .collect()
                        } else {
                            values.iter().map(|v| coerce(v, items)).collect()
                        };
                        Value::Array(items)
                    } else {
                        coerce(values[values.len() - 1], schema)
                    }
                }
                _ => continue,
            };
            if let Err(e) = self.validate(&schema_pointer, &value) {
                return Ok(Some(format!("parameter {name}: {e}")));
            }
        }
        if let (Some(content), Some(body)) =
            (op["requestBody"]["content"].as_object(), &ex.request_body)
        {
            if content.contains_key("application/json") {
                let pointer = format!("{op_pointer}/requestBody/content/application~1json/schema");
                match serde_json::from_slice::<Value>(body) {
                    Err(e) => return Ok(Some(format!("the body is not JSON: {e}"))),
                    Ok(value) => {
                        if let Err(e) = self.validate(&pointer, &value) {
                            return Ok(Some(format!("the body: {e}")));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// The answer against the response object at `pointer`.
    fn response(&self, pointer: &str, ex: &Exchange, head: bool) -> Result<(), String> {
        let (pointer, response) = self.resolve(pointer)?;
        let declared = response["headers"].as_object();
        for (name, _) in declared.into_iter().flatten() {
            let h_pointer = format!("{pointer}/headers/{}", escape(name));
            let (h_pointer, h) = self.resolve(&h_pointer)?;
            match header(&ex.headers, name) {
                None if h["required"] == true => {
                    return Err(format!("the required header {name} is missing"))
                }
                None => {}
                Some(value) => {
                    let s_pointer = format!("{h_pointer}/schema");
                    let (_, schema) = self.resolve(&s_pointer)?;
                    self.validate(&s_pointer, &coerce(value, schema))
                        .map_err(|e| format!("header {name}: {e}"))?;
                }
            }
        }
        for (name, _) in &ex.headers {
            let lower = name.to_ascii_lowercase();
            let known = STANDARD_HEADERS.contains(&lower.as_str())
                || declared.is_some_and(|d| d.keys().any(|k| k.eq_ignore_ascii_case(name)));
            if !known {
                return Err(format!(
                    "header {name} is not declared for this answer ({pointer})"
                ));
            }
        }
        let content_type = header(&ex.headers, "content-type");
        let length = header(&ex.headers, "content-length").unwrap_or("0");
        let Some(content) = response["content"].as_object() else {
            // A HEAD answer's Content-Type and Content-Length are the GET's
            // (RFC 9110 9.3.2); it has no body.
            if head && ex.body.is_empty() {
                return Ok(());
            }
            if content_type.is_some() || !ex.body.is_empty() || length != "0" {
                return Err(format!("a body where {pointer} declares none"));
            }
            return Ok(());
        };
        let Some(content_type) = content_type else {
            return Err(format!("no Content-Type where {pointer} declares a body"));
        };
        let bare = content_type.split(';').next().unwrap_or("").trim();
        let Some(media) = content
            .keys()
            .find(|k| *k == content_type)
            .or_else(|| content.keys().find(|k| *k == bare))
        else {
            return Err(format!(
                "Content-Type {content_type:?} is not one of {:?}",
                content.keys().collect::<Vec<_>>()
            ));
        };
        if head {
            return Ok(());
        }
        let schema = format!("{pointer}/content/{}/schema", escape(media));
        let instance = if bare == "application/json" {
            if !ex.body.ends_with(b"\n") {
                return Err("a JSON body without its final newline".into());
            }
            serde_json::from_slice(&ex.body).map_err(|e| format!("the body is not JSON: {e}"))?
        } else {
            Value::String(String::from_utf8_lossy(&ex.body).into_owned())
        };
        self.validate(&schema, &instance)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------
// The document itself, and proof that the checks can fail

/// Runs `openapi-spec-validator` (Python, the reference OpenAPI 3.x
/// validator, as `python3 -m openapi_spec_validator`) once on `paths` (it starts slowly): whether it accepted each,
/// and all it said.
fn spec_validator(paths: &[std::path::PathBuf]) -> (Vec<bool>, String) {
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .args(paths)
        .output()
        .expect("run openapi-spec-validator");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts = paths
        .iter()
        .map(|p| said.lines().any(|l| l == format!("{}: OK", p.display())))
        .collect();
    (verdicts, said)
}

#[test]
fn the_document_passes_the_openapi_validator() {
    let importable = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        let message = "SKIP contract::the_document_passes_the_openapi_validator: \
                       openapi-spec-validator not installed (python3 -m pip install openapi-spec-validator)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{message}; CI must run this test"
        );
        println!("{message}");
        return;
    }
    let doc: Value = serde_json::from_str(DOCUMENT).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    // The validator is no rubber stamp: a path parameter left undeclared
    // and a response without its description are refused.
    let dir = std::env::temp_dir().join(format!("registro-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let mut undeclared = doc.clone();
    undeclared["paths"]["/registro/1.0/apps/{app}/{id}"]["put"]["parameters"] = json!([]);
    let mut undescribed = doc.clone();
    undescribed["components"]["responses"]["NotFound"]
        .as_object_mut()
        .expect("an object")
        .remove("description");
    let mut paths =
        vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")];
    for (name, broken) in [("undeclared", undeclared), ("undescribed", undescribed)] {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, broken.to_string()).expect("write");
        paths.push(file);
    }
    let (verdicts, said) = spec_validator(&paths);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        verdicts,
        [true, false, false],
        "openapi-spec-validator on docs/openapi.json, then two broken copies:\n{said}"
    );
}

#[test]
fn the_server_serves_the_document_without_a_token() {
    let dir = std::env::temp_dir().join(format!("registro-openapi-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (write, read) = (dir.join("tokens"), dir.join("read-tokens"));
    std::fs::write(&write, "w\n").expect("write");
    std::fs::write(&read, "r\n").expect("write");
    let server = crate::support::start_with(|c| {
        c.tokens = registro::TokenFiles {
            write: Some(write),
            read: Some(read),
        }
    });
    let mut c = crate::support::Conn::open(server.local_addr());
    let r = c.get("/openapi.json");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let served: serde_json::Value = serde_json::from_str(&r.body).expect("the document is JSON");
    let document: serde_json::Value = serde_json::from_str(DOCUMENT).expect("docs/openapi.json");
    assert_eq!(served, document, "the served document is docs/openapi.json");
    assert!(
        r.body.len() < DOCUMENT.len() * 2 / 3,
        "served without its indentation: {} bytes",
        r.body.len()
    );
    // Reads of the registry still need the token; other methods answer 405
    // to a client that may write.
    assert_eq!(c.get("/apps").status, 401);
    let r = c.send_raw(
        b"DELETE /registro/1.0/openapi.json HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer w\r\n\r\n",
        false,
    );
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A real exchange with a fresh server, as [`Exchange`].
fn exchange(method: &str, path: &str, body: &str, setup: &[(&str, &str, &str)]) -> Exchange {
    let server = crate::support::start();
    let mut c = crate::support::Conn::open(server.local_addr());
    for (m, p, b) in setup {
        c.send(m, p, b);
    }
    let r = c.send(method, path, body);
    Exchange {
        request: Some((method.to_string(), format!("/registro/1.0{path}"))),
        request_body: Some(body.as_bytes().to_vec()),
        status: r.status,
        headers: r.headers,
        body: r.body.into_bytes(),
    }
}

/// The check of `ex` against the document changed by `edit`.
fn against(edit: impl Fn(&mut Value), ex: &Exchange) -> Result<String, String> {
    let mut doc: Value = serde_json::from_str(DOCUMENT).expect("JSON");
    edit(&mut doc);
    Contract::new(doc).check(ex)
}

/// Each part of an answer is held to the document: the same real exchanges
/// pass against it and fail against a document that says otherwise.
#[test]
fn a_document_that_differs_from_the_server_fails_the_check() {
    let app = r#"{"name":"web"}"#;
    let instance = r#"{"id":"w-1","ip":"10.0.0.1","port":80}"#;
    let setup = [("POST", "/apps", app), ("POST", "/apps/web", instance)];
    let read = exchange("GET", "/apps/web", "", &setup);
    let created = exchange("POST", "/apps", app, &[]);
    let exists = exchange("POST", "/apps", app, &[("POST", "/apps", app)]);
    let patch = exchange("PATCH", "/apps", "", &[]);
    for ex in [&read, &created, &exists, &patch] {
        contract().check(ex).expect("the real document holds");
    }
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, &Exchange, Edit)> = vec![
        (
            "a body field the schema does not have",
            &read,
            Box::new(|d| {
                d["components"]["schemas"]["Instance"]["required"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("version"))
            }),
        ),
        (
            "a status the operation does not list",
            &exists,
            Box::new(|d| {
                d["paths"]["/registro/1.0/apps"]["post"]["responses"]
                    .as_object_mut()
                    .unwrap()
                    .remove("409");
            }),
        ),
        (
            "a header the answer does not declare",
            &created,
            Box::new(|d| {
                d["paths"]["/registro/1.0/apps"]["post"]["responses"]["201"]
                    .as_object_mut()
                    .unwrap()
                    .remove("headers");
            }),
        ),
        (
            "a required header the answer lacks",
            &read,
            Box::new(|d| {
                d["components"]["headers"]["Registro-Last-Contact"]["required"] = json!(true)
            }),
        ),
        (
            "another media type",
            &read,
            Box::new(|d| {
                let r = &mut d["paths"]["/registro/1.0/apps/{app}"]["get"]["responses"]["200"];
                r["content"] = json!({"application/xml": {"schema": {}}});
            }),
        ),
        (
            "an Allow that names other methods",
            &patch,
            Box::new(|d| {
                d["paths"]["/registro/1.0/apps"]
                    .as_object_mut()
                    .unwrap()
                    .remove("head");
            }),
        ),
        (
            "a request the document refuses but the server takes",
            &created,
            Box::new(|d| d["components"]["schemas"]["Name"]["maxLength"] = json!(2)),
        ),
    ];
    for (what, ex, edit) in cases {
        assert!(
            against(edit, ex).is_err(),
            "{what}: the check passed:\n{ex:?}"
        );
    }
}

/// Through `support`: a server that answers off the document fails the
/// test that reads the answer (a listener plays a server gone wrong).
#[test]
fn a_connection_of_the_tests_panics_on_an_answer_off_the_document() {
    let answers: [&[u8]; 3] = [
        // `applications` must be a list.
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\nRegistro-Index: 1\r\n\r\n{\"applications\":{}}\n\n",
        // A status GET /apps never answers.
        b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"error\":\"x\"}\n",
        // No Registro-Index.
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"applications\":[]}\n",
    ];
    // Each through a `Conn`, and the first through `agent` too.
    let cases = answers
        .iter()
        .map(|a| (*a, false))
        .chain([(answers[0], true)]);
    for (answer, through_agent) in cases {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        crate::support::serving(addr);
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut s, &mut buf);
            s.write_all(answer).expect("answer");
        });
        let failed = std::panic::catch_unwind(|| {
            if through_agent {
                let url = format!("{}/apps", crate::support::base(addr));
                let _ = crate::support::agent().get(&url).call();
            } else {
                crate::support::Conn::open(addr).get("/apps");
            }
        });
        fake.join().expect("the fake server");
        let message = failed
            .expect_err("the answer passed")
            .downcast::<String>()
            .map(|m| *m)
            .unwrap_or_default();
        assert!(message.contains("breaks docs/openapi.json"), "{message}");
    }
}
