//! Config fixture checks shared by every filter's tests (not used at run time).
//!
//! A filter keeps `fixtures/good/*.json` (must be accepted) and `fixtures/bad/*.json`, each
//! with a `.err` file holding text its error message must contain. The same files are fed to
//! real Envoy by `tests/tests/envoy_configs.rs`.

use crate::config::ConfigError;
use std::path::{Path, PathBuf};

fn json_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no fixtures in {}", dir.display()));
    }
    Ok(files)
}

/// Checks every fixture under `fixtures_dir` with `parse`; returns every mismatch.
pub fn check(fixtures_dir: &Path, parse: impl Fn(&[u8]) -> Result<(), ConfigError>) -> Result<usize, String> {
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in json_files(&fixtures_dir.join("good"))? {
        let json = std::fs::read(&path).map_err(|e| e.to_string())?;
        if let Err(e) = parse(&json) {
            problems.push(format!("{}: refused: {e}", path.display()));
        }
        checked += 1;
    }
    for path in json_files(&fixtures_dir.join("bad"))? {
        let json = std::fs::read(&path).map_err(|e| e.to_string())?;
        let expected = std::fs::read_to_string(path.with_extension("err"))
            .map_err(|e| format!("{}: every bad fixture needs a .err file: {e}", path.display()))?;
        match parse(&json) {
            Ok(()) => problems.push(format!("{}: accepted", path.display())),
            Err(e) if !e.to_string().contains(expected.trim()) => {
                problems.push(format!("{}:\n  got:  {e}\n  want: {}", path.display(), expected.trim()))
            }
            Err(_) => {}
        }
        checked += 1;
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems.join("\n"))
    }
}
