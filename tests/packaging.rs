//! The hand-written man page (`packaging/man/consul-failover-dns.8`) keeps
//! up with the binary: every subcommand and long option that `--help`
//! prints has an entry, and every configuration key that `check-config`
//! prints is named. (packaging/check.sh renders the page with warnings on
//! and checks the Debian package.)

use std::collections::BTreeSet;
use std::process::Command;

const MAN_PAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/man/consul-failover-dns.8"
);

/// Runs the binary and returns its standard output.
fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_consul-failover-dns"))
        .args(args)
        .output()
        .expect("binary runs");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The man page source with roff escapes for `-`, fonts and zero-width
/// breaks removed, so `\-\-listen` reads `--listen`.
fn man_source() -> String {
    let text = std::fs::read_to_string(MAN_PAGE).expect("man page is readable");
    let mut plain = text.replace("\\-", "-").replace("\\&", "");
    for font in ["\\fB", "\\fI", "\\fR", "\\fP"] {
        plain = plain.replace(font, "");
    }
    plain
}

/// The tags of the page's `.TP` entries: the line after each `.TP`, its
/// macro and quotes dropped, split into words.
fn entry_tags(man: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = man.lines().collect();
    lines
        .windows(2)
        .filter(|pair| pair[0].trim() == ".TP")
        .flat_map(|pair| {
            pair[1]
                .split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '[' || c == ']')
                .filter(|word| !word.is_empty() && !word.starts_with('.'))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The subcommands listed under `Commands:` in a `--help` text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The long options a `--help` text defines (`  -c, --config <CONFIG>`,
/// `      --listen <LISTEN>`), not those its descriptions mention.
fn long_options(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = match line.split_once(", ") {
                Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
                _ => line,
            };
            let name = line.strip_prefix("--")?;
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty()).then(|| format!("--{name}"))
        })
        .collect()
}

/// Whether `word` occurs in `text` as a whole word (`_` and `-` count as
/// parts of words).
fn has_word(text: &str, word: &str) -> bool {
    let part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(part) && !after.is_some_and(part)
    })
}

#[test]
fn the_help_parsers_find_what_they_should() {
    let top = run(&["--help"]);
    let commands = subcommands(&top);
    for expected in ["run", "check-config", "demo", "help"] {
        assert!(commands.iter().any(|c| c == expected), "{commands:?}");
    }
    let options = long_options(&top);
    for expected in ["--config", "--listen", "--consul-address", "--admin-listen"] {
        assert!(options.contains(expected), "{options:?}");
    }
    assert!(!options.contains("--listen <LISTEN>"));
    assert!(has_word("a --listen b", "--listen"));
    assert!(!has_word("a --listen-x b", "--listen"));
    assert!(!has_word("dns.listen_all", "listen"));
}

#[test]
fn man_page_has_an_entry_for_every_subcommand_and_long_option() {
    let man = man_source();
    let tags = entry_tags(&man);
    let top = run(&["--help"]);
    let mut missing = Vec::new();
    let mut options = long_options(&top);
    for command in subcommands(&top) {
        if !tags.contains(&command) {
            missing.push(format!("subcommand {command}"));
        }
        if command != "help" {
            options.extend(long_options(&run(&[&command, "--help"])));
        }
    }
    for option in &options {
        if !tags.contains(option) {
            missing.push(format!("option {option}"));
        }
    }
    assert!(
        missing.is_empty(),
        "{MAN_PAGE} has no .TP entry for: {}",
        missing.join(", ")
    );
}

#[test]
fn man_page_names_every_configuration_key() {
    let man = man_source();
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/consul-failover-dns.toml"
    );
    let effective = run(&["check-config", "-c", shipped]);
    let mut missing = BTreeSet::new();
    for line in effective.lines() {
        let key = if let Some(section) = line.strip_prefix('[') {
            // `[queries.defaults.failover]`, `[[query]]`: the last part.
            section
                .trim_matches(|c| c == '[' || c == ']')
                .rsplit('.')
                .next()
                .unwrap_or_default()
        } else if let Some((key, _)) = line.split_once(" = ") {
            key.trim()
        } else {
            continue;
        };
        if !key.is_empty() && !has_word(&man, key) {
            missing.insert(key.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "{MAN_PAGE} does not name these configuration keys: {missing:?}"
    );
}
