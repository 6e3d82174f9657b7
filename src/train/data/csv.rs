//! The CSV of DiffSynth-Studio's `metadata.csv`, read the way its training scripts read it:
//! `pandas.read_csv(metadata_path)` with the defaults (DiffSynth-Studio
//! `diffsynth/core/data/unified_dataset.py`, `UnifiedDataset.load_metadata`; the older
//! `diffsynth/trainers/utils.py`, `ImageDataset`). The rules, as pandas' C parser applies them:
//!
//! - a UTF-8 byte-order mark before the header is dropped;
//! - fields are separated by `,`; a record ends at `\n`, `\r\n` or `\r` outside quotes;
//! - a field that starts with `"` is quoted: it runs to the next lone `"`, may hold commas and line
//!   breaks, and `""` inside it is one `"`; a `"` inside an unquoted field is kept as it is;
//! - empty lines (also lines of only spaces or tabs) are skipped (`skip_blank_lines=True`);
//! - the first record is the header; a record with more fields than the header is an error
//!   (pandas: "Expected 3 fields in line 5, saw 4"), missing trailing fields are empty (NaN).
//!
//! Stricter than pandas: text between a closing quote and the next comma (`"ab"c`, which pandas
//! glues to `abc`), an unterminated quote and a repeated column name are errors naming the line;
//! pandas' NA strings (`NA`, `null`, `None`, …) stay text. Never panics (a fuzz entry point).

/// A parsed CSV: the header's column names and the records after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Record>,
}

/// One record: the (1-based) line it starts on and its fields, as many as the header has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

impl Table {
    /// The index of column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }
}

/// Parses `text`; the error names the line and what is wrong.
pub fn parse(text: &str) -> Result<Table, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Records { chars: text.chars().peekable(), line: 1 };
    let mut header: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    while let Some((line, fields)) = records.next_record()? {
        if fields.len() == 1 && fields[0].quoted == 0 && fields[0].text.trim_matches([' ', '\t']).is_empty() {
            continue;
        }
        let fields: Vec<String> = fields.into_iter().map(|f| f.text).collect();
        match &header {
            None => header = Some(check_header(fields, line)?),
            Some(h) if fields.len() > h.len() => {
                return Err(format!("line {line}: {} fields, but the header has {} columns", fields.len(), h.len()))
            }
            Some(h) => {
                let mut fields = fields;
                fields.resize(h.len(), String::new());
                rows.push(Record { line, fields });
            }
        }
    }
    let header = header.ok_or("the file is empty: expected a header line such as `image,prompt`")?;
    Ok(Table { header, rows })
}

fn check_header(names: Vec<String>, line: usize) -> Result<Vec<String>, String> {
    let names: Vec<String> = names.into_iter().map(|n| n.trim().to_string()).collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(format!("line {line}: the column name `{n}` appears twice in the header"));
        }
    }
    Ok(names)
}

struct Field {
    text: String,
    /// 1 when the field was quoted.
    quoted: u8,
}

struct Records<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    /// The line the next character is on.
    line: usize,
}

impl Records<'_> {
    /// The next record and the line it starts on, or None at the end of the text.
    fn next_record(&mut self) -> Result<Option<(usize, Vec<Field>)>, String> {
        if self.chars.peek().is_none() {
            return Ok(None);
        }
        let start = self.line;
        let mut fields = Vec::new();
        loop {
            let field = self.field(start)?;
            fields.push(field);
            match self.chars.next() {
                Some(',') => continue,
                Some('\r') => {
                    if self.chars.peek() == Some(&'\n') {
                        self.chars.next();
                    }
                    self.line += 1;
                    return Ok(Some((start, fields)));
                }
                Some('\n') => {
                    self.line += 1;
                    return Ok(Some((start, fields)));
                }
                None => return Ok(Some((start, fields))),
                // cannot happen: `field` stops only before a separator or the end
                Some(c) => return Err(format!("line {}: unexpected character {c:?}", self.line)),
            }
        }
    }

    /// One field, stopping before `,`, a line break or the end.
    fn field(&mut self, record: usize) -> Result<Field, String> {
        let mut text = String::new();
        if self.chars.peek() != Some(&'"') {
            while let Some(&c) = self.chars.peek() {
                if matches!(c, ',' | '\n' | '\r') {
                    break;
                }
                text.push(c);
                self.chars.next();
            }
            return Ok(Field { text, quoted: 0 });
        }
        self.chars.next();
        let opened = self.line;
        loop {
            match self.chars.next() {
                None => {
                    return Err(format!(
                        "line {opened}: a quoted field (record of line {record}) is never closed: add the closing \""
                    ))
                }
                Some('"') if self.chars.peek() == Some(&'"') => {
                    self.chars.next();
                    text.push('"');
                }
                Some('"') => break,
                Some(c) => {
                    if c == '\n' || (c == '\r' && self.chars.peek() != Some(&'\n')) {
                        self.line += 1;
                    }
                    text.push(c);
                }
            }
        }
        match self.chars.peek() {
            None | Some(',' | '\n' | '\r') => Ok(Field { text, quoted: 1 }),
            Some(_) => Err(format!(
                "line {}: text after the closing quote of a field (write a quote inside a quoted field as \"\")",
                self.line
            )),
        }
    }
}

/// The `edit_image` cell of a row: empty (no reference), one path, or a list of paths written as
/// JSON (`["a.jpg", "b.jpg"]`, DiffSynth's `metadata_qwen_imgae_edit_multi.json` holds such lists)
/// or as Python's `repr` of a list (`['a.jpg', 'b.jpg']`, what `DataFrame.to_csv` writes for a list
/// column). pandas itself hands the cell to DiffSynth as one string; a list in a CSV is what its
/// JSON metadata means.
pub fn image_list(cell: &str) -> Result<Vec<String>, String> {
    let t = cell.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    if !t.starts_with('[') {
        return Ok(vec![t.to_string()]);
    }
    if let Ok(v) = serde_json::from_str::<Vec<String>>(t) {
        return Ok(v);
    }
    python_list(t)
        .ok_or_else(|| format!("`{}` is not a list of quoted paths (write [\"a.jpg\", \"b.jpg\"])", clip(t, 80)))
}

/// `['a', "b"]`: Python string literals (with `\\`, `\'`, `\"` escapes) separated by commas.
fn python_list(t: &str) -> Option<Vec<String>> {
    let inner = t.strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(q) = chars.next() else { return Some(out) };
        if q != '\'' && q != '"' {
            return None;
        }
        let mut s = String::new();
        loop {
            match chars.next()? {
                '\\' => s.push(chars.next()?),
                c if c == q => break,
                c => s.push(c),
            }
        }
        out.push(s);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// At most `n` characters of `s` (for messages).
pub fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(t: &Table) -> Vec<Vec<&str>> {
        t.rows.iter().map(|r| r.fields.iter().map(String::as_str).collect()).collect()
    }

    #[test]
    fn quoted_fields_hold_commas_quotes_and_line_breaks_and_lines_are_counted() {
        let text =
            "\u{feff}image,prompt\r\na.png,\"a cat, sitting\"\n\n\"b.png\",\"two\nlines \"\"quoted\"\"\"\r\nc.png\n";
        let t = parse(text).unwrap();
        assert_eq!(t.header, ["image", "prompt"]);
        assert_eq!(
            rows(&t),
            [vec!["a.png", "a cat, sitting"], vec!["b.png", "two\nlines \"quoted\""], vec!["c.png", ""]]
        );
        assert_eq!(t.rows.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 4, 6]);
    }

    #[test]
    fn malformed_csv_is_an_error_that_names_the_line() {
        let e = |t: &str| parse(t).unwrap_err();
        assert!(e("image,prompt\na,b,c\n").contains("line 2: 3 fields"), "{}", e("image,prompt\na,b,c\n"));
        assert!(e("image,prompt\na,\"open\n").contains("line 2: a quoted field"));
        assert!(e("image,prompt\na,\"x\"y\n").contains("line 2: text after the closing quote"));
        assert!(e("image,image\n").contains("appears twice"));
        assert!(e("").contains("empty"));
        assert!(e("\n  \n").contains("empty"));
    }

    #[test]
    fn edit_image_cells_are_one_path_or_a_json_or_python_list() {
        assert_eq!(image_list("").unwrap(), Vec::<String>::new());
        assert_eq!(image_list(" edit/a.jpg ").unwrap(), ["edit/a.jpg"]);
        assert_eq!(image_list("[\"a.jpg\", \"b,c.jpg\"]").unwrap(), ["a.jpg", "b,c.jpg"]);
        assert_eq!(image_list("['a.jpg', \"it's.jpg\", 'x\\'y.png']").unwrap(), ["a.jpg", "it's.jpg", "x'y.png"]);
        assert_eq!(image_list("[]").unwrap(), Vec::<String>::new());
        assert!(image_list("[a.jpg, b.jpg]").unwrap_err().contains("not a list of quoted paths"));
        assert!(image_list("['a.jpg' 'b.jpg']").is_err());
    }
}
