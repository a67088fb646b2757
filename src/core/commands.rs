//! Commands in PR comments: `/merge`, `/retest`, `/cancel`, `/hold`,
//! `/unhold`, `/priority <label>` and `/sluice help`.
//!
//! One command per line: a line whose first word, after at most 3 spaces,
//! is `/name` (any case), or `/sluice name` for the same. What GitHub shows
//! as something other than the writer's own words is not a command: quoted
//! lines (and a line of text right after a quoted paragraph, which GitHub
//! shows inside the quote), fenced and indented code, HTML comments (also
//! one opened after text, which runs on to its `-->` or a blank line). A
//! word with a second `/`
//! is a path (`/usr/bin/env`), and a word not shaped like a command
//! (`/merge!`, `/`) is prose; both are ignored. Arguments are text and
//! nothing else: `/priority $(rm -rf /)` names the label `$(rm -rf /)`.
//!
//! Bounded: the first `MAX_BODY` bytes are read, and the first
//! `MAX_COMMANDS` command lines kept; one pass over the lines, each looked
//! at a bounded number of times.

use super::text;

/// Bytes of a comment read; the line the limit cuts in two is not read.
pub const MAX_BODY: usize = 64 * 1024;

/// Command lines kept from one comment (known, unknown or refused alike);
/// the rest are counted in `Parsed::dropped`.
pub const MAX_COMMANDS: usize = 20;

/// GitHub's limit on a label's name, in characters.
pub const MAX_LABEL_CHARS: usize = 50;

/// Characters of a command's name after `/`; a longer word is prose.
const MAX_NAME: usize = 32;

/// Characters of a refused line said back to its writer.
const MAX_ECHO: usize = 80;

/// What a command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Test the PR again.
    Retest,
    /// Land the PR once it is approved and passing.
    Merge,
    /// Take the PR out of its train and stop its build.
    Cancel,
    /// Keep the PR from landing until `/unhold`.
    Hold,
    /// Let a held PR land again.
    Unhold,
    /// The label as written (trimmed): not checked against the configured
    /// labels here.
    Priority(String),
    /// Answer with the command reference (`help()`).
    Help,
}

impl Command {
    /// The name after `/`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Retest => "retest",
            Command::Merge => "merge",
            Command::Cancel => "cancel",
            Command::Hold => "hold",
            Command::Unhold => "unhold",
            Command::Priority(_) => "priority",
            Command::Help => "help",
        }
    }
}

/// The command lines of one comment. Lines are numbered from 1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The commands, in the order written.
    pub commands: Vec<(usize, Command)>,
    /// Lines shaped like a command sluice does not know: the word
    /// (`/foo`, `/sluice foo`).
    pub unknown: Vec<(usize, String)>,
    /// Known commands written wrongly: the line (trimmed, bounded, control
    /// characters replaced) and why.
    pub refused: Vec<(usize, String, String)>,
    /// Command lines after the first `MAX_COMMANDS`, not read.
    pub dropped: usize,
}

impl Parsed {
    /// Nothing in the comment is for sluice.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
            && self.unknown.is_empty()
            && self.refused.is_empty()
            && self.dropped == 0
    }

    /// What sluice says back about the lines it could not take, in line
    /// order, then about those it did not read; empty when there is
    /// nothing to say.
    pub fn complaints(&self) -> Vec<String> {
        let mut said: Vec<(usize, String)> = self
            .unknown
            .iter()
            .map(|(n, word)| (*n, text::command_unknown(word)))
            .chain(
                self.refused
                    .iter()
                    .map(|(n, line, why)| (*n, text::command_refused(line, why))),
            )
            .collect();
        said.sort_by_key(|(n, _)| *n);
        let mut said: Vec<String> = said.into_iter().map(|(_, s)| s).collect();
        if self.dropped > 0 {
            said.push(text::commands_dropped(self.dropped));
        }
        said
    }
}

/// The command reference, in Markdown.
pub fn help() -> String {
    text::commands_help()
}

/// The commands in a comment's Markdown `body`.
pub fn parse(body: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut kept = 0;
    let mut open: Option<Block> = None;
    // The last line was a quoted paragraph's: a line of text right after
    // it continues it inside the quote (a lazy continuation line).
    let mut lazy = false;
    for (n, line) in bounded_body(body).lines().enumerate() {
        if let Some(block) = open {
            match block.goes_on(line) {
                Some(inner) => {
                    if block.ends_at(inner) {
                        open = None;
                    }
                    lazy = false;
                    continue;
                }
                // Its blockquote ended, and the block with it.
                None => open = None,
            }
        }
        let (depth, inner) = unquote(line, usize::MAX);
        if lazy && !line.trim().is_empty() {
            // Still the quote's paragraph: shown quoted, not a command.
            open = Block::opened_inline(line, depth);
            continue;
        }
        let block = Block::opened_by(inner, depth);
        lazy = depth > 0 && block.is_none() && is_paragraph_text(inner);
        if depth == 0
            && let Some(word) = command_word(line)
        {
            let Some(found) = read_command(word) else {
                continue;
            };
            if kept == MAX_COMMANDS {
                parsed.dropped += 1;
                continue;
            }
            kept += 1;
            let n = n + 1;
            match found {
                Found::Command(c) => parsed.commands.push((n, c)),
                Found::Unknown(word) => parsed.unknown.push((n, word)),
                Found::Refused(why) => parsed.refused.push((n, echo(line.trim()), why)),
            }
            continue;
        }
        open = block.or_else(|| Block::opened_inline(inner, depth));
    }
    parsed
}

/// `inner` (a line without its quote markers) is text a following line
/// may continue: not blank, not a heading. (A fence or an HTML comment it
/// opens is a block of its own, read before this.)
fn is_paragraph_text(inner: &str) -> bool {
    let text = inner.trim();
    !text.is_empty() && !text.starts_with('#')
}

/// The first `MAX_BODY` bytes of `body`, without the line they cut.
fn bounded_body(body: &str) -> &str {
    if body.len() <= MAX_BODY {
        return body;
    }
    let cut = body.floor_char_boundary(MAX_BODY);
    let rest = &body[cut..];
    if rest.starts_with('\n') || rest.starts_with("\r\n") {
        return &body[..cut];
    }
    match body[..cut].rfind('\n') {
        Some(end) => &body[..end],
        None => "",
    }
}

/// A block whose lines are not commands, open since an earlier line.
#[derive(Clone, Copy, Debug)]
enum Block {
    /// A fenced code block: its fence (character and length), the
    /// blockquote depth it is in, and the column its list item's content
    /// starts at (0 outside lists).
    Fence {
        fence: char,
        len: usize,
        depth: usize,
        column: usize,
    },
    /// An HTML comment, which GitHub does not show. `inline`: opened after
    /// text on its line, so it is inside a paragraph, which a blank line
    /// ends (and with it the comment, shown as text from there).
    Comment { depth: usize, inline: bool },
}

impl Block {
    /// The block `line` opens, if any: `inner` is the line without its
    /// `depth` quote markers.
    fn opened_by(inner: &str, depth: usize) -> Option<Block> {
        let (column, item) = unlist(inner);
        let (indent, rest) = spaces(item);
        if indent > 3 {
            return None;
        }
        if let Some(after) = rest.strip_prefix("<!--") {
            return (!after.contains("-->")).then_some(Block::Comment {
                depth,
                inline: false,
            });
        }
        let fence = rest.chars().next().filter(|&c| c == '`' || c == '~')?;
        let len = run(rest, fence);
        let info = &rest[len..];
        if len < 3 || (fence == '`' && info.contains('`')) {
            return None;
        }
        Some(Block::Fence {
            fence,
            len,
            depth,
            column,
        })
    }

    /// The HTML comment opened after text on `inner` (a line without its
    /// `depth` quote markers) and not closed on it, if any.
    fn opened_inline(inner: &str, depth: usize) -> Option<Block> {
        let (_, after) = inner.rsplit_once("<!--")?;
        (!after.contains("-->")).then_some(Block::Comment {
            depth,
            inline: true,
        })
    }

    /// `line` without the block's quote markers, or `None` if it has fewer
    /// (the blockquote holding the block ended).
    fn goes_on(self, line: &str) -> Option<&str> {
        let depth = match self {
            Block::Fence { depth, .. } | Block::Comment { depth, .. } => depth,
        };
        let (found, inner) = unquote(line, depth);
        (found == depth).then_some(inner)
    }

    /// `inner` (a line of the block, without its quote markers) is its
    /// last.
    fn ends_at(self, inner: &str) -> bool {
        match self {
            Block::Comment { inline, .. } => {
                inner.contains("-->") || (inline && inner.trim().is_empty())
            }
            Block::Fence {
                fence, len, column, ..
            } => {
                let (indent, rest) = spaces(inner);
                let closing = run(rest, fence);
                indent <= column + 3 && closing >= len && rest[closing..].trim().is_empty()
            }
        }
    }
}

/// Leading spaces (a tab counts as reaching the next multiple of 4
/// columns) and what follows them.
fn spaces(s: &str) -> (usize, &str) {
    let mut columns = 0;
    for (i, c) in s.char_indices() {
        match c {
            ' ' => columns += 1,
            '\t' => columns += 4 - columns % 4,
            _ => return (columns, &s[i..]),
        }
    }
    (columns, "")
}

/// Bytes of `s` that are `c` at its start (`c` is ASCII).
fn run(s: &str, c: char) -> usize {
    s.len() - s.trim_start_matches(c).len()
}

/// Blockquote markers (`>`, each after at most 3 spaces and with one
/// optional space after it) at the start of `line`, at most `limit` of
/// them: how many, and the rest of the line.
fn unquote(line: &str, limit: usize) -> (usize, &str) {
    let mut depth = 0;
    let mut rest = line;
    while depth < limit {
        let (indent, after) = spaces(rest);
        let Some(inner) = after.strip_prefix('>').filter(|_| indent <= 3) else {
            break;
        };
        rest = inner.strip_prefix(' ').unwrap_or(inner);
        depth += 1;
    }
    (depth, rest)
}

/// List item markers (`-`, `+`, `*`, `1.`, `1)`, each after at most 3
/// spaces and followed by a space) at the start of `s`: the column of the
/// item's content and the rest.
fn unlist(s: &str) -> (usize, &str) {
    let mut column = 0;
    let mut rest = s;
    loop {
        let (indent, after) = spaces(rest);
        if indent > 3 {
            break;
        }
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let marker = match after.as_bytes().get(digits) {
            Some(b'-' | b'+' | b'*') if digits == 0 => 1,
            Some(b'.' | b')') if (1..=9).contains(&digits) => digits + 1,
            _ => break,
        };
        let Some(content) = after[marker..].strip_prefix(' ') else {
            break;
        };
        column += indent + marker + 1;
        rest = content;
    }
    (column, rest)
}

/// The line from its first word on, if that word starts with `/` after at
/// most 3 spaces (more, or a tab, is indented code).
fn command_word(line: &str) -> Option<&str> {
    let rest = line.trim_start_matches(' ');
    (line.len() - rest.len() <= 3 && rest.starts_with('/')).then_some(rest)
}

/// What a command line says.
enum Found {
    Command(Command),
    Unknown(String),
    Refused(String),
}

/// `line` starts with `/`. `None`: its first word is not shaped like a
/// command, so the line is prose.
fn read_command(line: &str) -> Option<Found> {
    let (word, args) = split_word(line);
    let name = word.strip_prefix('/').filter(|name| is_name(name))?;
    if !name.eq_ignore_ascii_case("sluice") {
        return Some(read_named(name, args, word));
    }
    let (sub, args) = split_word(args);
    Some(if sub.is_empty() {
        Found::Command(Command::Help)
    } else if is_name(sub) {
        read_named(sub, args, &format!("/sluice {sub}"))
    } else {
        Found::Unknown(format!("/sluice {}", echo_bounded(sub, MAX_NAME)))
    })
}

/// The command `name` (as `written`) with the rest of its line, `args`.
fn read_named(name: &str, args: &str, written: &str) -> Found {
    let command = match name.to_ascii_lowercase().as_str() {
        "retest" => Command::Retest,
        "merge" => Command::Merge,
        "cancel" => Command::Cancel,
        "hold" => Command::Hold,
        "unhold" => Command::Unhold,
        "help" => Command::Help,
        "priority" => return read_priority(args),
        _ => return Found::Unknown(written.to_string()),
    };
    if args.is_empty() {
        Found::Command(command)
    } else {
        Found::Refused(text::command_takes_no_argument(written))
    }
}

/// `/priority`'s argument: one label, the rest of the line.
fn read_priority(label: &str) -> Found {
    let chars = label.chars().count();
    if label.is_empty() {
        Found::Refused(text::priority_label_missing())
    } else if chars > MAX_LABEL_CHARS {
        Found::Refused(text::priority_label_too_long(chars))
    } else if label.chars().any(char::is_control) {
        Found::Refused(text::priority_label_control())
    } else {
        Found::Command(Command::Priority(label.to_string()))
    }
}

/// The first word of `s` and the rest, both trimmed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim();
    match s.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (s, ""),
    }
}

/// 1 to `MAX_NAME` ASCII letters, digits, `-` or `_`.
fn is_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A line said back to its writer: bounded, control characters replaced.
fn echo(line: &str) -> String {
    echo_bounded(line, MAX_ECHO)
}

fn echo_bounded(s: &str, max: usize) -> String {
    let mut said: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        said.push('…');
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn commands(body: &str) -> Vec<Command> {
        parse(body).commands.into_iter().map(|(_, c)| c).collect()
    }

    fn priority(label: &str) -> Command {
        Command::Priority(label.into())
    }

    #[test]
    fn reads_each_command() {
        use Command::*;
        for (body, want) in [
            ("/retest", Retest),
            ("/merge", Merge),
            ("/cancel", Cancel),
            ("/hold", Hold),
            ("/unhold", Unhold),
            ("/help", Help),
            ("/sluice help", Help),
            ("/priority high", priority("high")),
        ] {
            let parsed = parse(body);
            assert_eq!(parsed.commands, vec![(1, want)], "{body}");
            assert!(parsed.unknown.is_empty() && parsed.refused.is_empty());
            assert!(!parsed.is_empty());
        }
    }

    #[test]
    fn reads_several_commands_in_order_with_their_lines() {
        let body = "Looks good to me.\n\n/retest\nand then\n/priority release blocker\n/merge\n";
        assert_eq!(
            parse(body).commands,
            vec![
                (3, Command::Retest),
                (5, priority("release blocker")),
                (6, Command::Merge)
            ]
        );
        // Written twice, said twice: what to make of it is not the parser's.
        assert_eq!(commands("/hold\n/hold"), vec![Command::Hold, Command::Hold]);
    }

    #[test]
    fn sluice_name_is_a_synonym() {
        use Command::*;
        let body = "/sluice merge\n/sluice retest\n/sluice priority p1\n/sluice\n/SLUICE Cancel\n/sluice  hold  ";
        assert_eq!(
            commands(body),
            vec![Merge, Retest, priority("p1"), Help, Cancel, Hold]
        );
        let parsed = parse("/sluice frobnicate\n/sluice /merge\n/sluice merge now");
        assert_eq!(
            parsed.unknown,
            vec![
                (1, "/sluice frobnicate".into()),
                (2, "/sluice /merge".into())
            ]
        );
        assert_eq!(parsed.refused.len(), 1);
        assert_eq!(parsed.refused[0].0, 3);
        assert!(
            parsed.refused[0]
                .2
                .contains("/sluice merge takes no argument")
        );
    }

    #[test]
    fn command_names_ignore_case() {
        use Command::*;
        assert_eq!(
            commands("/Merge\n/RETEST\n/PrIoRiTy High\n/Sluice HELP"),
            // The label keeps its case: labels are matched later.
            vec![Merge, Retest, priority("High"), Help]
        );
    }

    #[test]
    fn quoted_lines_are_not_commands() {
        for body in [
            "> /merge",
            ">/merge",
            ">> /merge",
            "> > /merge",
            "   > /merge",
            "> Please\n> /merge",
            "- > /merge",
            "1. > /merge",
            "> - /merge",
            "- /merge",
        ] {
            assert!(parse(body).is_empty(), "{body:?}");
        }
        // A line of text right after a quoted paragraph is still in the
        // quote (GitHub shows it quoted); a blank line ends the quote.
        assert!(parse("> /retest\n/merge").is_empty());
        assert!(parse("> - /retest\n/merge").is_empty());
        assert_eq!(commands("> /retest\n\n/merge"), vec![Command::Merge]);
        assert_eq!(commands("> # Title\n/merge"), vec![Command::Merge]);
        assert_eq!(commands(">\n/merge"), vec![Command::Merge]);
    }

    #[test]
    fn fenced_code_is_not_commands() {
        for body in [
            "```\n/merge\n```",
            "```sh\n/merge\n```",
            "``` shell with words\n/merge\n```",
            "~~~\n/merge\n~~~",
            "~~~toml\n/merge\n~~~",
            "   ```\n/merge\n   ```",
            // Closed only by a fence as long or longer, of the same kind,
            // alone on its line.
            "````\n```\n/merge\n````",
            "```\n/merge\n~~~\n/retest",
            "~~~~\n/merge\n~~~\n/retest\n~~~~~",
            "```\n``` not a close\n/merge\n```",
            // Unclosed: to the end.
            "```\n/merge\n\n/retest",
            // In a list item, and in a quote.
            "- ```\n  /merge\n  ```",
            "1. run:\n   ```\n   /merge\n   ```",
            "> ```\n> /merge\n> ```",
        ] {
            assert!(parse(body).is_empty(), "{body:?}");
        }
        for body in [
            "```\n/hold\n```\n/merge",
            "~~~~\n/hold\n~~~~~\n/merge",
            "```\n/hold\n   ```   \n/merge",
            "```\r\n/hold\r\n```\r\n/merge",
            "- ```\n  /hold\n  ```\n/merge",
            // A fence in a quote ends with the quote.
            "> ```\n> /hold\n\n/merge",
            "> ```\n/merge",
            // Not fences: backticks in the info string, indented 4, or two.
            "```js`\n/merge",
            "    ```\n/merge",
            "``\n/merge",
        ] {
            assert_eq!(commands(body), vec![Command::Merge], "{body:?}");
        }
    }

    #[test]
    fn indented_code_is_not_commands() {
        for body in [
            "    /merge",
            "\t/merge",
            "  \t/merge",
            "text\n\n        /merge",
        ] {
            assert!(parse(body).is_empty(), "{body:?}");
        }
        assert_eq!(commands("   /merge"), vec![Command::Merge]);
    }

    #[test]
    fn html_comments_are_not_commands() {
        for body in [
            "<!--\n/merge\n-->",
            "<!-- a note\n/merge\nend -->",
            "<!--\n/merge",
            // Opened after text: inside the paragraph, to its `-->`.
            "thanks <!-- a note\n/merge\n-->",
            "> quoted <!--\n/merge\n-->",
        ] {
            assert!(parse(body).is_empty(), "{body:?}");
        }
        assert_eq!(
            commands("<!-- hidden -->\n/merge\n<!--\n/hold\n-->\n/retest"),
            vec![Command::Merge, Command::Retest]
        );
        // An inline one closed on its line, or cut by a blank line (then
        // it is shown as text), hides nothing after it.
        assert_eq!(commands("a <!-- b -->\n/merge"), vec![Command::Merge]);
        assert_eq!(commands("a <!-- b\n\n/merge"), vec![Command::Merge]);
    }

    #[test]
    fn mentions_in_prose_are_not_commands() {
        for body in [
            "please /merge this",
            "I would not /merge yet",
            "`/merge`",
            "**/merge**",
            "Use /retest if it flakes.",
        ] {
            assert!(parse(body).is_empty(), "{body:?}");
        }
    }

    #[test]
    fn paths_and_other_words_are_prose() {
        for body in [
            "/usr/bin/env bash",
            "/tmp/x",
            "/merge/",
            "/merge!",
            "/merge, please",
            "/",
            "/ merge",
            "/é",
            "/${x}",
            &format!("/{}", "a".repeat(33)),
        ] {
            assert!(parse(body).is_empty(), "{body:?}");
        }
    }

    #[test]
    fn unknown_commands_are_reported() {
        let longest = format!("/{}", "a".repeat(32));
        let parsed = parse(&format!("/foo\n/mergee\n/re-test_2 now\n{longest}\n/merge"));
        assert_eq!(
            parsed.unknown,
            vec![
                (1, "/foo".into()),
                (2, "/mergee".into()),
                (3, "/re-test_2".into()),
                (4, longest.clone()),
            ]
        );
        assert_eq!(parsed.commands, vec![(5, Command::Merge)]);
        let said = text::command_unknown("/foo");
        assert!(said.starts_with("unknown command `/foo`; "), "{said}");
    }

    #[test]
    fn arguments_are_refused_with_a_reason() {
        for name in ["retest", "merge", "cancel", "hold", "unhold", "help"] {
            let parsed = parse(&format!("  /{name} now please  "));
            assert!(parsed.commands.is_empty(), "{name}");
            let (line, text, why) = &parsed.refused[0];
            assert_eq!(
                (*line, text.as_str()),
                (1, format!("/{name} now please").as_str())
            );
            assert!(
                why.starts_with(&format!("/{name} takes no argument")),
                "{why}"
            );
        }
        let fifty = "x".repeat(MAX_LABEL_CHARS);
        assert_eq!(
            commands(&format!("/priority {fifty}")),
            vec![priority(&fifty)]
        );
        let cases = [
            ("/priority", "needs a label"),
            ("/priority    ", "needs a label"),
            (
                &format!("/priority {fifty}x"),
                "at most 50 characters, this one 51",
            ),
            (&format!("/priority {}", "é".repeat(51)), "this one 51"),
            ("/priority a\tb", "control characters"),
            ("/priority a\u{7}b", "control characters"),
            ("/priority a\rb", "control characters"),
        ];
        for (body, why) in cases {
            let parsed = parse(body);
            assert!(parsed.commands.is_empty(), "{body:?}");
            assert!(
                parsed.refused[0].2.contains(why),
                "{body:?}: {:?}",
                parsed.refused
            );
        }
    }

    #[test]
    fn hostile_arguments_are_kept_verbatim() {
        for label in [
            "$(rm -rf /)",
            "`rm -rf /`",
            "; rm -rf / #",
            "'; DROP TABLE prs; --",
            "../../etc/passwd",
            "@everyone <script>",
            "%s%s%n",
            "\u{202e}reversed",
        ] {
            assert_eq!(
                commands(&format!("/priority {label}")),
                vec![priority(label)]
            );
        }
    }

    #[test]
    fn refused_lines_are_said_back_bounded() {
        let parsed = parse(&format!("/merge \u{7}{}", "y".repeat(200)));
        let (_, said, _) = &parsed.refused[0];
        assert!(said.starts_with("/merge \u{FFFD}yyy"), "{said}");
        assert_eq!(said.chars().count(), MAX_ECHO + 1);
        assert!(said.ends_with('…'));
        let parsed = parse("/sluice \u{7}");
        assert_eq!(parsed.unknown, vec![(1, "/sluice \u{FFFD}".into())]);
    }

    #[test]
    fn whitespace_and_crlf_are_fine() {
        use Command::*;
        let body = "\r\n\r\n  /merge  \r\n/priority  p1 \r\n\t\r\n/hold\r\n\r\n";
        assert_eq!(
            parse(body).commands,
            vec![(3, Merge), (4, priority("p1")), (6, Hold)]
        );
    }

    #[test]
    fn at_most_max_commands_are_read() {
        let body: String = (0..100).map(|_| "/retest\n").collect();
        let parsed = parse(&body);
        assert_eq!(parsed.commands.len(), MAX_COMMANDS);
        assert_eq!(parsed.commands.last().unwrap().0, MAX_COMMANDS);
        assert_eq!(parsed.dropped, 100 - MAX_COMMANDS);
        // Unknown and refused lines count too, so the answer is bounded.
        let body: String = (0..100)
            .map(|n| ["/foo\n", "/merge now\n", "/merge\n", "prose\n"][n % 4])
            .collect();
        let parsed = parse(&body);
        let kept = parsed.commands.len() + parsed.unknown.len() + parsed.refused.len();
        assert_eq!((kept, parsed.dropped), (MAX_COMMANDS, 75 - MAX_COMMANDS));
        let said = parsed.complaints();
        assert_eq!(said.len(), 7 + 7 + 1);
        assert_eq!(
            said.last().unwrap(),
            "75 commands; sluice reads at most 20 per comment, so the last 55 were not read: \
             write them in another comment"
        );
    }

    #[test]
    fn long_bodies_are_cut_at_a_char_boundary() {
        // "é" is two bytes; the line of them straddles the limit at an odd
        // offset, so the cut falls inside one, after 20 of them.
        let head = format!("/merge\n{}\n", "x".repeat(MAX_BODY - 59));
        let straddling = format!("/priority {}", "é".repeat(40));
        let body = format!("{head}{straddling}\n/retest\n");
        assert_eq!(head.len() + 10 + 41, MAX_BODY);
        assert!(!body.is_char_boundary(MAX_BODY));
        // The line cut in two is not read (as a label of 20 "é"), nor what
        // follows.
        assert_eq!(parse(&body).commands, vec![(1, Command::Merge)]);
        // A line ending at the limit is whole.
        let whole = format!("{}\n/hold\n/retest", "x".repeat(MAX_BODY - 6));
        assert_eq!(commands(&whole), vec![Command::Hold]);
        // One line of 64 KiB and more: nothing.
        assert!(parse(&"/".repeat(MAX_BODY + 3)).is_empty());
        assert!(parse(&format!("/merge {}", "é".repeat(MAX_BODY))).is_empty());
    }

    #[test]
    fn hostile_bodies_never_panic() {
        let k = MAX_BODY;
        for body in [
            ">".repeat(k),
            "> ".repeat(k),
            "- ".repeat(k),
            "1. ".repeat(k),
            "`".repeat(k),
            "~".repeat(k),
            " ".repeat(k),
            "\t".repeat(k),
            "\n".repeat(k),
            "\r".repeat(k),
            "<!--".repeat(k),
            "/".repeat(k),
            "/a ".repeat(k),
            "```\n".repeat(k),
            "é".repeat(k),
            format!("x{}", "é".repeat(k)),
            "\u{0}".repeat(k),
            "/priority ".repeat(k),
        ] {
            let parsed = parse(&body);
            assert!(parsed.commands.len() <= MAX_COMMANDS);
        }
    }

    #[test]
    fn replies_name_every_command() {
        let help = help();
        let unknown = text::command_unknown("/x");
        for name in [
            "merge",
            "retest",
            "cancel",
            "hold",
            "unhold",
            "priority <label>",
        ] {
            let command = format!("`/{name}`");
            assert!(help.contains(&command), "{command} not in {help}");
            assert!(unknown.contains(&command), "{command} not in {unknown}");
        }
        assert!(help.contains("`/sluice help`") && unknown.contains("`/sluice help`"));
    }

    #[test]
    fn complaints_follow_the_lines() {
        let parsed = parse("/merge now\n/foo\n/merge");
        assert_eq!(
            parsed.complaints(),
            vec![
                "did not run `/merge now`: /merge takes no argument; write `/merge` alone on its line",
                "unknown command `/foo`; commands sluice knows: `/merge`, `/retest`, `/cancel`, \
                 `/hold`, `/unhold`, `/priority <label>`, `/sluice help`",
            ]
        );
        assert!(parse("/merge").complaints().is_empty());
        assert!(parse("").is_empty() && parse("just prose\n\n").is_empty());
    }

    // ------------------------------------------------------------ properties

    /// Markdown-shaped lines, so random bodies often hold quotes, fences,
    /// lists, comments and more command lines than are read.
    fn markdownish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/merge".to_string()),
            Just("/priority ".to_string()),
            Just("/sluice ".to_string()),
            Just("/foo".to_string()),
            Just("```".to_string()),
            Just("~~~".to_string()),
            Just("> ".to_string()),
            Just("- ".to_string()),
            Just("    ".to_string()),
            Just("<!--".to_string()),
            Just("-->".to_string()),
            Just("\r".to_string()),
            "\\PC{0,8}",
            any::<String>(),
        ];
        let line = proptest::collection::vec(piece, 0..4).prop_map(|pieces| pieces.concat());
        (proptest::collection::vec(line, 0..120), any::<bool>())
            .prop_map(|(lines, crlf)| lines.join(if crlf { "\r\n" } else { "\n" }))
    }

    /// Bodies of up to 3 × `MAX_COMMANDS` lines, most of them commands
    /// (known, unknown or written wrongly), some prose.
    fn dense() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            4 => written().prop_map(|(_, line)| line),
            1 => Just("/foo".to_string()),
            1 => Just("/merge now".to_string()),
            1 => prose(),
        ];
        proptest::collection::vec(line, 0..3 * MAX_COMMANDS).prop_map(|lines| lines.join("\n"))
    }

    /// Lines of prose: nothing that starts a command, a fence or a comment.
    fn prose() -> impl Strategy<Value = String> {
        // Not a quote: a command line right after a quoted one is in it.
        "( {0,3}[^ /`~<>\r\n\t][^`~<\r\n]{0,40})?"
    }

    /// A command and a way to write it.
    fn written() -> impl Strategy<Value = (Command, String)> {
        let command = prop_oneof![
            Just(Command::Retest),
            Just(Command::Merge),
            Just(Command::Cancel),
            Just(Command::Hold),
            Just(Command::Unhold),
            Just(Command::Help),
            "[!-~é中]([ -~é中]{0,48}[!-~é中])?".prop_map(Command::Priority),
        ];
        (
            command,
            0..4usize,
            any::<bool>(),
            any::<bool>(),
            "[ \t]{0,3}",
        )
            .prop_map(|(command, indent, sluice, upper, trailing)| {
                let mut name = command.name().to_string();
                if upper {
                    name = name.to_uppercase();
                }
                let word = if sluice {
                    format!("/sluice {name}")
                } else {
                    format!("/{name}")
                };
                let argument = match &command {
                    Command::Priority(label) => format!(" {label}"),
                    _ => String::new(),
                };
                let line = format!("{}{word}{argument}{trailing}", " ".repeat(indent));
                (command, line)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn any_text_is_parsed_boundedly(
            body in prop_oneof![any::<String>(), markdownish(), dense()],
        ) {
            let parsed = parse(&body);
            let kept = parsed.commands.len() + parsed.unknown.len() + parsed.refused.len();
            prop_assert!(kept <= MAX_COMMANDS);
            prop_assert!(parsed.dropped == 0 || kept == MAX_COMMANDS);
            for (_, line, _) in &parsed.refused {
                prop_assert!(line.chars().count() <= MAX_ECHO + 1);
            }
        }

        #[test]
        fn quoted_bodies_have_no_commands(body in prop_oneof![any::<String>(), markdownish()]) {
            let quoted: String = body.lines().map(|l| format!("> {l}\n")).collect();
            prop_assert!(parse(&quoted).is_empty(), "{:?}", quoted);
        }

        #[test]
        fn fenced_bodies_have_no_commands(
            body in prop_oneof![any::<String>(), markdownish()],
            info in "[a-z ]{0,8}",
            closed in any::<bool>(),
            tilde in any::<bool>(),
        ) {
            let c = if tilde { '~' } else { '`' };
            let longest = body.split(|b| b != c).map(str::len).max().unwrap_or(0);
            let fence = c.to_string().repeat(longest.max(2) + 1);
            let close = if closed { fence.as_str() } else { "" };
            let fenced = format!("{fence}{info}\n{body}\n{close}");
            prop_assert!(parse(&fenced).is_empty(), "{:?}", fenced);
        }

        #[test]
        fn written_commands_are_read_back(
            lines in proptest::collection::vec((prose(), written()), 0..=MAX_COMMANDS),
            end in prose(),
            crlf in any::<bool>(),
        ) {
            let newline = if crlf { "\r\n" } else { "\n" };
            let mut body = String::new();
            for (prose, (_, line)) in &lines {
                body.push_str(&format!("{prose}{newline}{line}{newline}"));
            }
            body.push_str(&end);
            let want: Vec<Command> = lines.into_iter().map(|(_, (c, _))| c).collect();
            let parsed = parse(&body);
            prop_assert!(parsed.unknown.is_empty() && parsed.refused.is_empty(), "{:?}", parsed);
            prop_assert_eq!(commands(&body), want);
        }
    }
}
