//! "Which requests does this rule apply to": a path (prefix or exact) and/or a method list.
//! Shared by every filter whose config has ordered rules (body-limit, path-pin).

use crate::config::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Any,
    Prefix(Vec<u8>),
    Exact(Vec<u8>),
}

/// A validated request matcher. Paths are compared as bytes against `:path` without its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMatch {
    path: PathMatch,
    /// Empty matches every method.
    methods: Vec<Vec<u8>>,
}

/// `:path` without the query string.
pub fn path_without_query(path: &[u8]) -> &[u8] {
    path.split(|&b| b == b'?').next().unwrap_or(path)
}

fn check_path(value: &str, at: &str) -> Result<(), ConfigError> {
    if !value.starts_with('/') {
        return Err(ConfigError::at(at, format!("{value:?} must start with \"/\"")));
    }
    if value.contains(['?', '#']) || value.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(ConfigError::at(
            at,
            format!("{value:?} must be a plain path: no query, fragment, spaces or control characters"),
        ));
    }
    Ok(())
}

impl RequestMatch {
    /// Builds a matcher from a rule's fields; `at` is the rule's path in the config
    /// (`rules[2]`), used in errors. `require_some` refuses a rule that matches everything.
    pub fn from_config(
        path_prefix: Option<&str>,
        path_exact: Option<&str>,
        methods: Option<&[String]>,
        at: &str,
        require_some: bool,
    ) -> Result<RequestMatch, ConfigError> {
        let path = match (path_prefix, path_exact) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::at(at, "give path_prefix or path_exact, not both"));
            }
            (Some(p), None) => {
                check_path(p, &format!("{at}.path_prefix"))?;
                PathMatch::Prefix(p.as_bytes().to_vec())
            }
            (None, Some(p)) => {
                check_path(p, &format!("{at}.path_exact"))?;
                PathMatch::Exact(p.as_bytes().to_vec())
            }
            (None, None) => PathMatch::Any,
        };
        let mut list: Vec<Vec<u8>> = Vec::new();
        if let Some(methods) = methods {
            if methods.is_empty() {
                return Err(ConfigError::at(
                    format!("{at}.methods"),
                    "must not be empty; leave it out to match every method",
                ));
            }
            for (j, m) in methods.iter().enumerate() {
                let here = format!("{at}.methods[{j}]");
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(ConfigError::at(
                        here,
                        format!("{m:?} is not a method: methods are case-sensitive, write e.g. \"POST\""),
                    ));
                }
                if list.iter().any(|x| x == m.as_bytes()) {
                    return Err(ConfigError::at(here, format!("{m:?} is listed twice")));
                }
                list.push(m.as_bytes().to_vec());
            }
        }
        if require_some && path == PathMatch::Any && list.is_empty() {
            return Err(ConfigError::at(at, "a rule needs path_prefix, path_exact or methods"));
        }
        Ok(RequestMatch { path, methods: list })
    }

    /// A plain path prefix from a list of prefixes (uri-hash `prefixes`, forwarded
    /// `exempt_prefixes`); errors name `at`, the list entry.
    pub fn prefix(prefix: &str, at: &str) -> Result<RequestMatch, ConfigError> {
        check_path(prefix, at)?;
        Ok(RequestMatch { path: PathMatch::Prefix(prefix.as_bytes().to_vec()), methods: Vec::new() })
    }

    pub fn looks_at_path(&self) -> bool {
        self.path != PathMatch::Any
    }

    pub fn looks_at_method(&self) -> bool {
        !self.methods.is_empty()
    }

    /// `path` is `:path` already stripped of its query ([`path_without_query`]).
    pub fn matches(&self, method: &[u8], path: &[u8]) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path.starts_with(p),
            PathMatch::Exact(p) => path == p.as_slice(),
        };
        path_ok && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }

    /// True when every request this matcher accepts is already accepted by `earlier`, so a
    /// rule with this matcher placed after `earlier` could never apply.
    pub fn is_shadowed_by(&self, earlier: &RequestMatch) -> bool {
        let path_covered = match (&earlier.path, &self.path) {
            (PathMatch::Any, _) => true,
            (PathMatch::Prefix(e), PathMatch::Prefix(s) | PathMatch::Exact(s)) => s.starts_with(e),
            (PathMatch::Exact(e), PathMatch::Exact(s)) => e == s,
            _ => false,
        };
        let methods_covered = earlier.methods.is_empty()
            || (!self.methods.is_empty() && self.methods.iter().all(|m| earlier.methods.contains(m)));
        path_covered && methods_covered
    }
}

/// Refuses a rule list in which a rule can never match. `at(i)` names rule `i`.
pub fn check_reachable<'a>(
    matchers: impl IntoIterator<Item = &'a RequestMatch>,
    at: impl Fn(usize) -> String,
) -> Result<(), ConfigError> {
    let matchers: Vec<&RequestMatch> = matchers.into_iter().collect();
    for (i, m) in matchers.iter().enumerate() {
        if let Some(j) = matchers.iter().take(i).position(|earlier| m.is_shadowed_by(earlier)) {
            return Err(ConfigError::at(
                at(i),
                format!("can never match: every request it matches is matched first by {}", at(j)),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn m(prefix: Option<&str>, exact: Option<&str>, methods: &[&str]) -> RequestMatch {
        let methods: Vec<String> = methods.iter().map(|s| s.to_string()).collect();
        let methods = (!methods.is_empty()).then_some(methods.as_slice());
        RequestMatch::from_config(prefix, exact, methods, "r", false).unwrap()
    }

    #[test]
    fn matching() {
        let git = m(Some("/git/"), None, &[]);
        assert!(git.matches(b"GET", b"/git/repo.git/info/refs"));
        assert!(!git.matches(b"GET", b"/gitx"));
        assert!(!git.matches(b"GET", b"/git"));
        let exact = m(None, Some("/status"), &["GET", "HEAD"]);
        assert!(exact.matches(b"HEAD", b"/status"));
        assert!(!exact.matches(b"POST", b"/status"));
        assert!(!exact.matches(b"GET", b"/status/x"));
        assert_eq!(path_without_query(b"/a?b?c"), b"/a");
        assert_eq!(path_without_query(b""), b"");
    }

    #[test]
    fn shadowing() {
        let a = m(Some("/a"), None, &[]);
        assert!(m(Some("/a/b"), None, &["POST"]).is_shadowed_by(&a));
        assert!(m(None, Some("/a/x"), &[]).is_shadowed_by(&a));
        assert!(!a.is_shadowed_by(&m(Some("/a/b"), None, &[])));
        assert!(!m(None, Some("/a"), &[]).is_shadowed_by(&m(None, Some("/ab"), &[])));
        assert!(m(None, Some("/a"), &["GET"]).is_shadowed_by(&m(None, Some("/a"), &[])));
        assert!(!m(Some("/a"), None, &[]).is_shadowed_by(&m(Some("/a"), None, &["GET"])));
        assert!(m(Some("/a"), None, &[]).is_shadowed_by(&m(None, None, &[])));
    }

    #[test]
    fn config_errors_name_the_field() {
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a [String]>, &'a str);
        let cases: &[Case] = &[
            (Some("/a"), Some("/a"), None, "r: give path_prefix or path_exact, not both"),
            (Some("a"), None, None, "r.path_prefix: \"a\" must start with \"/\""),
            (None, Some("/a b"), None, "r.path_exact: \"/a b\" must be a plain path"),
            (None, None, Some(&[]), "r.methods: must not be empty"),
            (None, None, None, "r: a rule needs path_prefix, path_exact or methods"),
        ];
        for &(prefix, exact, methods, want) in cases {
            let err = RequestMatch::from_config(prefix, exact, methods, "r", true).unwrap_err().to_string();
            assert!(err.contains(want), "got {err}, want {want}");
        }
        let dup = vec!["GET".to_string(), "GET".to_string()];
        let err = RequestMatch::from_config(None, None, Some(&dup), "r", true).unwrap_err().to_string();
        assert!(err.contains("r.methods[1]: \"GET\" is listed twice"), "{err}");
    }
}
