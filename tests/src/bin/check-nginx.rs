//! check-nginx: checks an nginx configuration's Tether parts before nginx runs them.
//!
//! `check-nginx [-p PREFIX] nginx.conf` loads every `proxy_wasm` filter's module (paths relative
//! to PREFIX, as nginx's `-p`; default the current directory) with its configuration, as
//! ngx_wasm_module will, and checks the routing contract (`set $tether_node`, its map, the
//! upstream groups) and the `proxy_set_header` lines. ngx_wasm_module stops a worker for good
//! when a filter refuses its configuration, and `nginx -t` does not run filters: this does.
//! The process environment is the filters' (affinity's `keys_env`). Exit status 1 on an error.

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (prefix, file) = match args.as_slice() {
        [file] => (PathBuf::from("."), PathBuf::from(file)),
        [flag, prefix, file] if flag == "-p" => (PathBuf::from(prefix), PathBuf::from(file)),
        _ => {
            eprintln!("usage: check-nginx [-p PREFIX] nginx.conf");
            std::process::exit(2);
        }
    };
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        eprintln!("check-nginx: {}: {e}", file.display());
        std::process::exit(2);
    });
    let env: Vec<(String, String)> = std::env::vars().collect();
    let report = tether_e2e::nginx_conf::check(&text, &prefix, &env);
    for line in &report.ok {
        println!("ok       {line}");
    }
    for line in &report.warnings {
        println!("warning  {line}");
    }
    for line in &report.errors {
        println!("error    {line}");
    }
    if !report.errors.is_empty() {
        std::process::exit(1);
    }
}
