//! Terminal styling: colour only when the stream is a terminal and
//! `NO_COLOR` is unset (https://no-color.org), plus column alignment.

use std::io::IsTerminal;

/// Whether to colour output written to `stream`.
pub fn colour_on(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A colour for a word of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// Good: enforcing, allowed.
    Green,
    /// Attention: defunct, drift, denials.
    Yellow,
    /// Bad: denied, problems.
    Red,
    /// Headings.
    Bold,
}

/// `text` in `paint` when `on`, else as is.
pub fn paint(on: bool, paint: Paint, text: &str) -> String {
    if !on {
        return text.to_string();
    }
    let code = match paint {
        Paint::Green => "32",
        Paint::Yellow => "33",
        Paint::Red => "31",
        Paint::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// Rows of cells as aligned columns (two spaces apart; the last column is
/// not padded). Cells must be plain text (colour is added afterwards).
pub fn table(rows: &[Vec<String>], indent: &str) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = indent.to_string();
            for (i, cell) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["c 1:3 rw".to_string(), "hits 12".into(), "/dev/null".into()],
            vec!["b 7:* r".to_string(), "hits 0".into(), "".into()],
        ];
        assert_eq!(
            table(&rows, "  "),
            ["  c 1:3 rw  hits 12  /dev/null", "  b 7:* r   hits 0"]
        );
    }

    #[test]
    fn paint_is_plain_when_off() {
        assert_eq!(paint(false, Paint::Red, "x"), "x");
        assert_eq!(paint(true, Paint::Red, "x"), "\x1b[31mx\x1b[0m");
    }
}
