//! Aligned text tables for the commands that print rows.

/// `headers` and `rows` as aligned columns two spaces apart, a rule of
/// dashes under the headers; each line ends with a newline.
pub(crate) fn render(headers: &[String], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .chain([&headers[i]])
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned();
        l.push('\n');
        l
    };
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let mut out = line(headers);
    out.push_str(&line(&rule));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let headers = vec!["region".to_owned(), "n".to_owned()];
        let rows = vec![
            vec!["us-east".to_owned(), "12345".to_owned()],
            vec!["é".to_owned(), "1".to_owned()],
        ];
        assert_eq!(
            render(&headers, &rows),
            "region   n\n-------  -----\nus-east  12345\né        1\n"
        );
    }
}
