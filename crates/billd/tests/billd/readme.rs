//! The README's statements that code can check.

use std::path::PathBuf;

fn readme() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    std::fs::read_to_string(&path).unwrap()
}

/// The text of the first fenced block with `lang` after `heading`.
fn block_after(text: &str, heading: &str, lang: &str) -> String {
    let section = &text[text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"))..];
    let fence = format!("```{lang}\n");
    let start = section.find(&fence).unwrap() + fence.len();
    let len = section[start..].find("```").unwrap();
    section[start..start + len].to_string()
}

#[test]
fn the_readme_shows_the_built_in_plans_file_as_it_is() {
    let shown = block_after(&readme(), "## Plans and limits", "toml");

    assert_eq!(
        shown.trim(),
        billd_core::catalog::SEED_CATALOG_TOML.trim(),
        "the README's plans file differs from the built-in catalog"
    );
    billd_core::Catalog::from_toml(&shown).unwrap();
}

#[test]
fn the_readme_sends_no_reader_to_notes_outside_the_repository() {
    let text = readme();

    assert!(!text.contains("DESIGN.md"), "the README names DESIGN.md");
    assert!(
        !text.contains("no handlers yet"),
        "the README says no handlers exist"
    );
}

/// The subcommands `billd --help` lists (`name` of each `  name  about` row).
fn subcommands() -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_billd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let commands = &help[help.find("Commands:").unwrap()..];
    commands
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_command_table_names_every_subcommand() {
    let text = readme();
    let table = &text[text.find("## Command line").unwrap()..];
    let table = &table[..table[3..].find("\n## ").unwrap()];

    let commands = subcommands();
    assert!(commands.len() >= 8, "{commands:?}");
    for command in commands {
        assert!(
            table.contains(&format!("`billd {command}")),
            "the README's command table omits `billd {command}`"
        );
    }
}
