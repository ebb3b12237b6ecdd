//! What produced a page or a JSON file: the command line, this program's version,
//! the time, the model (path, weight fingerprint, config) and the texts read.

use std::path::Path;

use bdh::Model;

/// Named facts about how a result was produced, in the order they were added.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Provenance(Vec<(String, String)>);

impl Provenance {
    /// The command line as typed (shell-quoted), the version and the local time.
    pub fn of_this_run() -> Self {
        let command: Vec<String> = std::env::args_os().map(|a| quote(&a.to_string_lossy())).collect();
        let mut p = Provenance::default();
        p.add("command", command.join(" "));
        p.add("version", format!("bdh {}", env!("CARGO_PKG_VERSION")));
        p.add("time", jiff::ZonedDateTime::now().strftime("%Y-%m-%d %H:%M:%S %Z").to_string());
        p
    }

    /// Adds a fact.
    pub fn add(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }

    /// Adds the model: where it was read from, its weights' fingerprint, its config.
    pub fn model(&mut self, source: &str, model: &Model) {
        self.add("model", source.to_string());
        self.add("weights (FNV-1a)", model.params().fingerprint());
        self.add("model config", model.config().to_json());
    }

    /// Adds a text read from `name`: its size and a fingerprint of its bytes.
    pub fn text(&mut self, key: &str, name: &str, bytes: &[u8]) {
        let hash =
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        self.add(key, format!("{name} ({} bytes, FNV-1a {hash:016x})", bytes.len()));
    }

    /// Adds a file's name as a text's source.
    pub fn file(&mut self, key: &str, path: &Path, bytes: &[u8]) {
        self.text(key, &path.display().to_string(), bytes);
    }

    /// The facts, in order.
    pub fn rows(&self) -> Vec<(String, String)> {
        self.0.clone()
    }
}

/// `arg` as a POSIX shell reads it back: bare when it is safe, else single-quoted.
fn quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn arguments_are_quoted_as_a_shell_reads_them() {
        assert_eq!(super::quote("--model"), "--model");
        assert_eq!(super::quote("a b"), "'a b'");
        assert_eq!(super::quote("it's"), r"'it'\''s'");
        assert_eq!(super::quote(""), "''");
    }
}
