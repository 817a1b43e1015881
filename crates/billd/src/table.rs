//! Output of the listing commands (`billd events list`, `billd audit`):
//! tables whose columns are as wide as their widest cell, RFC 3339 UTC
//! times, and JSON Lines for `--json`.

use std::fmt::Write as _;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// Renders `rows` under `header`: every column as wide as its widest cell
/// (header included), two spaces between columns, the last column not
/// padded. Control characters in cells (a newline in an audited value) are
/// escaped so that each row stays on one line.
pub fn render(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let cells: Vec<Vec<String>> =
        std::iter::once(header.iter().map(|(h, _)| h.to_string()).collect())
            .chain(
                rows.iter()
                    .map(|row| row.iter().map(|cell| one_line(cell)).collect()),
            )
            .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, ((_, align), width)) in header.iter().zip(&widths).enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            let last = i + 1 == header.len();
            if i > 0 {
                line.push_str("  ");
            }
            let pad = width.saturating_sub(cell.chars().count());
            match align {
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
                Align::Left if last => line.push_str(cell),
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn one_line(cell: &str) -> String {
    if cell.chars().any(char::is_control) {
        cell.chars().flat_map(char::escape_default).collect()
    } else {
        cell.to_string()
    }
}

pub use billd_core::calendar::rfc3339;

/// One JSON object per line (JSON Lines): what `--json` prints.
pub fn json_lines(values: &[serde_json::Value]) -> String {
    values.iter().fold(String::new(), |mut out, value| {
        let _ = writeln!(out, "{value}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_across_leap_days_and_before_1970() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_newlines_stay_escaped() {
        let shown = render(
            &[
                ("ID", Align::Left),
                ("N", Align::Right),
                ("NOTE", Align::Left),
            ],
            &[
                vec!["evt_a_much_longer_id".into(), "7".into(), "x".into()],
                vec!["evt_b".into(), "12".into(), "two\nlines".into()],
            ],
        );

        assert_eq!(
            shown,
            "ID                     N  NOTE\n\
             evt_a_much_longer_id   7  x\n\
             evt_b                 12  two\\nlines\n"
        );
    }
}
