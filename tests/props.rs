//! Property tests: the command parser, the name rules, and the history merge
//! (the same messages stored in any order, with duplicates, give the same
//! history and version).

use std::collections::BTreeMap;

use parley::names::{
    check_parting, private_key, Conversation, Nick, Room, MAX_BODY_CHARS, MAX_PARTING_CHARS,
};
use parley::proto::ChatMessage;
use parley::store::{OrderKey, Store};
use parley::terminal::{parse, Command, Target, Window};
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------- names

/// The rules as the design states them, written out independently.
fn nick_rule(s: &str) -> bool {
    let n = s.chars().count();
    (1..=32).contains(&n)
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn room_rule(s: &str) -> bool {
    s.strip_prefix('#').is_some_and(|rest| {
        let n = rest.chars().count();
        (1..=64).contains(&n)
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// Strings that are mostly near the rules: allowed characters, a few
/// forbidden ones (space, `#`, `@`, `+`, non-ASCII letters and digits, a NUL,
/// a combining mark), and lengths on both sides of the limits.
fn name_like() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        8 => proptest::char::range('a', 'z'),
        3 => proptest::char::range('A', 'Z'),
        3 => proptest::char::range('0', '9'),
        1 => Just('_'),
        1 => Just('-'),
        1 => prop::sample::select(vec![
            ' ', '#', '@', '+', '.', '/', '\t', '\n', '\0', 'é', 'ß', 'İ', '\u{212a}', '٣', '\u{301}',
            '\u{200b}', 'Ａ',
        ]),
    ];
    let body = prop::collection::vec(ch, 0..70).prop_map(|v| v.into_iter().collect::<String>());
    prop_oneof![
        body.clone(),
        body.prop_map(|s| format!("#{s}")),
        any::<String>(),
    ]
}

fn valid_nick() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,32}"
}

fn valid_room() -> impl Strategy<Value = String> {
    "#[A-Za-z0-9_-]{1,64}"
}

/// `s` with the case of each ASCII letter flipped where `flips` says so.
fn recase(s: &str, flips: &[bool]) -> String {
    s.chars()
        .zip(flips.iter().cycle())
        .map(|(c, &f)| {
            if f && c.is_ascii_uppercase() {
                c.to_ascii_lowercase()
            } else if f {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn nick_parse_accepts_exactly_the_rule(s in name_like()) {
        prop_assert_eq!(Nick::parse(&s).is_ok(), nick_rule(&s), "{:?}", s);
        if let Ok(n) = Nick::parse(&s) {
            prop_assert_eq!(n.as_str(), s.as_str());
        }
    }

    #[test]
    fn room_parse_accepts_exactly_the_rule(s in name_like()) {
        prop_assert_eq!(Room::parse(&s).is_ok(), room_rule(&s), "{:?}", s);
        if let Ok(r) = Room::parse(&s) {
            prop_assert_eq!(r.as_str(), s.as_str());
            // A room's key is its conversation key, and parses back.
            let conv = Conversation::parse_key(&r.key());
            prop_assert_eq!(conv.map(|c| c.key()), Ok(r.key()));
        }
    }

    #[test]
    fn conversation_keys_never_panic_and_are_canonical(s in name_like()) {
        if let Ok(c) = Conversation::parse_key(&s) {
            prop_assert_eq!(c.key(), s);
        }
    }

    #[test]
    fn nicks_compare_without_case(s in valid_nick(), flips in prop::collection::vec(any::<bool>(), 1..8)) {
        let other = recase(&s, &flips);
        let (a, b) = (Nick::parse(&s).unwrap(), Nick::parse(&other).unwrap());
        prop_assert_eq!(a.key(), b.key());
        prop_assert_eq!(a.key(), s.to_ascii_lowercase());
        // Shown as written.
        prop_assert_eq!(b.as_str(), other.as_str());
    }

    #[test]
    fn rooms_compare_without_case(s in valid_room(), flips in prop::collection::vec(any::<bool>(), 1..8)) {
        let other = recase(&s, &flips);
        let (a, b) = (Room::parse(&s).unwrap(), Room::parse(&other).unwrap());
        prop_assert_eq!(a.key(), b.key());
        prop_assert_eq!(a.key(), s.to_ascii_lowercase());
        prop_assert_eq!(b.as_str(), other.as_str());
    }

    #[test]
    fn private_keys_are_symmetric_and_canonical(
        a in valid_nick(),
        b in valid_nick(),
        flips in prop::collection::vec(any::<bool>(), 1..8),
    ) {
        let (na, nb) = (Nick::parse(&a).unwrap(), Nick::parse(&b).unwrap());
        let nb2 = Nick::parse(&recase(&b, &flips)).unwrap();
        let key = private_key(&na, &nb);
        prop_assert_eq!(&key, &private_key(&nb, &na));
        prop_assert_eq!(&key, &private_key(&na, &nb2));
        let parsed = Conversation::parse_key(&key);
        if na.key() == nb.key() {
            // Nobody has a private chat with themselves.
            prop_assert!(parsed.is_err());
        } else {
            let c = parsed.unwrap();
            prop_assert_eq!(c.key(), key);
            prop_assert!(c.is_party(&na) && c.is_party(&nb) && c.is_party(&nb2));
            prop_assert_eq!(c.display_for(&na), format!("@{}", nb.key()));
        }
    }
}

// ---------------------------------------------------------------- parser

/// A body the parser hands back unchanged when it is typed after `/msg NICK `
/// or alone on a line: it does not start with whitespace (that separates it
/// from the nick), does not end in a line ending (dropped), has something
/// besides whitespace, and fits the limit.
fn body() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        6 => proptest::char::range(' ', '~'),
        1 => prop::sample::select(vec!['\t', 'é', '€', '😀', '\u{a0}', '\u{301}', '/', '#', '@']),
        1 => any::<char>(),
    ];
    (
        any::<char>().prop_filter("starts with non-whitespace", |c| !c.is_whitespace()),
        prop::collection::vec(ch, 0..40),
    )
        .prop_map(|(first, rest)| {
            let mut s: String = std::iter::once(first).chain(rest).collect();
            while s.ends_with(['\r', '\n']) {
                s.pop();
            }
            s
        })
}

/// A parting message the parser hands back unchanged after `/quit ` or
/// `/part #room `: a [`body`] without the control characters a parting
/// message may not hold, still starting with something besides whitespace.
fn parting() -> impl Strategy<Value = String> {
    body()
        .prop_map(|b| b.chars().filter(|c| !c.is_control()).collect::<String>())
        .prop_filter("starts with non-whitespace", |m| {
            m.chars().next().is_some_and(|c| !c.is_whitespace())
        })
}

fn a_room() -> impl Strategy<Value = Room> {
    valid_room().prop_map(|s| Room::parse(&s).unwrap())
}

fn a_nick() -> impl Strategy<Value = Nick> {
    valid_nick().prop_map(|s| Nick::parse(&s).unwrap())
}

fn a_command() -> impl Strategy<Value = Command> {
    let target = prop_oneof![
        a_room().prop_map(Target::Room),
        a_nick().prop_map(Target::Nick),
    ];
    prop_oneof![
        a_room().prop_map(Command::Join),
        // A parting message needs its room first.
        (
            proptest::option::of(a_room()),
            proptest::option::of(parting())
        )
            .prop_map(|(room, message)| {
                let message = if room.is_some() { message } else { None };
                Command::Leave(room, message)
            }),
        (a_nick(), body()).prop_map(|(n, b)| Command::Msg(n, b)),
        a_nick().prop_map(Command::Query),
        proptest::option::of(a_room()).prop_map(Command::Who),
        Just(Command::Rooms),
        Just(Command::Users),
        (
            proptest::option::of(target),
            proptest::option::of(1usize..1_000_000)
        )
            .prop_map(|(target, limit)| Command::History { target, limit }),
        a_room().prop_map(Command::Delete),
        Just(Command::Help),
        Just(Command::Reach),
        proptest::option::of(parting()).prop_map(Command::Quit),
        body().prop_map(Command::Say),
        "[a-z\\p{L}][a-z\\p{L} ]{0,30}".prop_map(Command::Me),
        proptest::option::of(prop_oneof![
            a_room().prop_map(|r| Window::Target(Target::Room(r))),
            a_nick().prop_map(|n| Window::Target(Target::Nick(n))),
            (1usize..1000).prop_map(Window::Number),
        ])
        .prop_map(Command::Switch),
        (proptest::option::of(a_room()), proptest::option::of(body()))
            // Without a room, a first word of `#...` would name one.
            .prop_filter("a room-less topic does not start with #", |(r, t)| {
                r.is_some() || !t.as_deref().is_some_and(|t| t.starts_with('#'))
            })
            .prop_map(|(room, text)| Command::Topic { room, text }),
        proptest::option::of(body()).prop_map(Command::Away),
        Just(Command::Close),
        Just(Command::NickList),
        proptest::option::of(a_nick()).prop_map(Command::Ignore),
        a_nick().prop_map(Command::Unignore),
        "[a-z\\p{L}][a-z\\p{L} ]{0,30}[a-z]".prop_map(Command::Lastlog),
        a_nick().prop_map(Command::Nick),
    ]
}

/// How a person might type the command: any case for its name, any
/// whitespace between words, aliases, `@` before nicks, arguments of
/// `/history` in either order, trailing blanks and a line ending.
#[derive(Debug, Clone)]
struct Style {
    flips: Vec<bool>,
    sep: &'static str,
    alias: bool,
    at: bool,
    swap: bool,
    tail: &'static str,
}

fn a_style() -> impl Strategy<Value = Style> {
    (
        prop::collection::vec(any::<bool>(), 1..8),
        prop::sample::select(vec![" ", "  ", "\t", " \t "]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec!["", " ", "\t", "\r\n", "\n", "  \r\n"]),
    )
        .prop_map(|(flips, sep, alias, at, swap, tail)| Style {
            flips,
            sep,
            alias,
            at,
            swap,
            tail,
        })
}

fn render(cmd: &Command, st: &Style) -> String {
    let name = |n: &str| format!("/{}", recase(n, &st.flips));
    let sep = st.sep;
    let nick = |n: &Nick| {
        if st.at {
            format!("@{n}")
        } else {
            n.to_string()
        }
    };
    // Commands whose last word is a name or nothing may end in blanks; a
    // message's text keeps its trailing blanks, so it ends only in a line
    // ending.
    let line_end = st.tail.trim_start_matches([' ', '\t']);
    match cmd {
        Command::Join(r) => format!(
            "{}{sep}{r}{}",
            name(if st.alias { "j" } else { "join" }),
            st.tail
        ),
        Command::Leave(r, m) => {
            let n = name(if st.alias { "part" } else { "leave" });
            match (r, m) {
                (Some(r), Some(m)) => format!("{n}{sep}{r}{sep}{m}{line_end}"),
                (Some(r), None) => format!("{n}{sep}{r}{}", st.tail),
                (None, _) => format!("{n}{}", st.tail),
            }
        }
        Command::Msg(n, b) => format!("{}{sep}{}{sep}{b}{line_end}", name("msg"), nick(n)),
        Command::Query(n) => format!(
            "{}{sep}{}{}",
            name(if st.alias { "q" } else { "query" }),
            nick(n),
            st.tail
        ),
        Command::Me(text) => format!("{}{sep}{text}{line_end}", name("me")),
        Command::Switch(w) => {
            let n = name(if st.alias { "window" } else { "switch" });
            match w {
                None => format!("{n}{}", st.tail),
                Some(Window::Number(i)) => format!("{n}{sep}{i}{}", st.tail),
                Some(Window::Target(Target::Room(r))) => format!("{n}{sep}{r}{}", st.tail),
                // Digits alone would be a window number: such a nick
                // takes its `@`.
                Some(Window::Target(Target::Nick(x)))
                    if x.as_str().chars().all(|c| c.is_ascii_digit()) =>
                {
                    format!("{n}{sep}@{x}{}", st.tail)
                }
                Some(Window::Target(Target::Nick(x))) => format!("{n}{sep}{}{}", nick(x), st.tail),
            }
        }
        Command::Whois(n) => format!("{}{sep}{}{}", name("whois"), nick(n), st.tail),
        Command::Trust(n) => format!("{}{sep}{}{}", name("trust"), nick(n), st.tail),
        Command::Who(r) => match r {
            Some(r) => format!(
                "{}{sep}{r}{}",
                name(if st.alias { "names" } else { "who" }),
                st.tail
            ),
            None => format!(
                "{}{}",
                name(if st.alias { "names" } else { "who" }),
                st.tail
            ),
        },
        Command::Rooms => format!(
            "{}{}",
            name(if st.alias { "list" } else { "rooms" }),
            st.tail
        ),
        Command::Users => format!("{}{}", name("users"), st.tail),
        Command::History { target, limit } => {
            let mut words = Vec::new();
            if let Some(t) = target {
                words.push(match t {
                    Target::Room(r) => r.to_string(),
                    Target::Nick(n) => format!("@{n}"),
                });
            }
            if let Some(l) = limit {
                words.push(l.to_string());
            }
            if st.swap {
                words.reverse();
            }
            let mut s = name("history");
            for w in words {
                s.push_str(sep);
                s.push_str(&w);
            }
            s.push_str(st.tail);
            s
        }
        Command::Delete(r) => format!("{}{sep}{r}{}", name("delete"), st.tail),
        Command::Topic { room, text } => {
            let mut s = name("topic");
            if let Some(r) = room {
                s.push_str(&format!("{sep}{r}"));
            }
            match text {
                Some(t) => s.push_str(&format!("{sep}{t}{line_end}")),
                None => s.push_str(st.tail),
            }
            s
        }
        Command::Away(Some(m)) => format!("{}{sep}{m}{line_end}", name("away")),
        Command::Away(None) => format!("{}{}", name("away"), st.tail),
        Command::Help => format!("{}{}", name("help"), st.tail),
        Command::Close => format!("{}{}", name(if st.alias { "wc" } else { "close" }), st.tail),
        Command::NickList => format!("{}{}", name("nicklist"), st.tail),
        Command::Ignore(Some(n)) => format!("{}{sep}{}{}", name("ignore"), nick(n), st.tail),
        Command::Ignore(None) => format!("{}{}", name("ignore"), st.tail),
        Command::Unignore(n) => format!("{}{sep}{}{}", name("unignore"), nick(n), st.tail),
        Command::Lastlog(text) => format!("{}{sep}{text}{}", name("lastlog"), st.tail),
        Command::Nick(n) => format!("{}{sep}{}{}", name("nick"), nick(n), st.tail),
        Command::Reach => format!("{}{}", name("reach"), st.tail),
        Command::Quit(m) => {
            let n = name(if st.alias { "exit" } else { "quit" });
            match m {
                Some(m) => format!("{n}{sep}{m}{line_end}"),
                None => format!("{n}{}", st.tail),
            }
        }
        Command::Say(b) => {
            // A message starting with `/` is typed with a second one.
            if b.starts_with('/') {
                format!("/{b}{line_end}")
            } else {
                format!("{b}{line_end}")
            }
        }
    }
}

/// Lines near the grammar: command names (some misspelled or in odd case),
/// arguments that are almost names, numbers, stray slashes and whitespace.
fn line_like() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        prop::sample::select(vec![
            "/join",
            "/JOIN",
            "/leave",
            "/part",
            "/msg",
            "/query",
            "/who",
            "/rooms",
            "/list",
            "/users",
            "/history",
            "/delete",
            "/help",
            "/quit",
            "/exit",
            "/topic",
            "/away",
            "/",
            "//",
            "/jion",
            "#",
            "@",
            "#rust",
            "@bob",
            "bob",
            "0",
            "-1",
            "+5",
            "18446744073709551616",
            "é",
            "\u{0}",
        ])
        .prop_map(str::to_owned),
        name_like(),
        "[0-9+-]{1,25}",
    ];
    let sep = prop::sample::select(vec!["", " ", "  ", "\t", "\r", "\n", "\u{3000}", "\u{a0}"]);
    prop::collection::vec((word, sep), 0..6).prop_map(|v| {
        v.into_iter()
            .map(|(w, s)| format!("{w}{s}"))
            .collect::<String>()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parser_never_panics(line in prop_oneof![any::<String>(), line_like()]) {
        match parse(&line) {
            Ok(Some(Command::Say(b))) | Ok(Some(Command::Msg(_, b))) => {
                // Whatever it accepts as a message fits the rules.
                prop_assert!(parley::names::check_body(&b).is_ok());
            }
            Ok(Some(Command::Leave(_, Some(m)))) | Ok(Some(Command::Quit(Some(m)))) => {
                // A parting message it takes is one the router takes.
                prop_assert!(check_parting(&m).is_ok() && !m.trim().is_empty());
            }
            Ok(None) => prop_assert!(line.trim().is_empty()),
            Ok(Some(_)) => {}
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn generated_commands_round_trip(cmd in a_command(), st in a_style()) {
        let line = render(&cmd, &st);
        prop_assert_eq!(parse(&line), Ok(Some(cmd)), "line {:?}", line);
    }

    #[test]
    fn bodies_are_accepted_up_to_the_limit(n in (MAX_BODY_CHARS - 3)..(MAX_BODY_CHARS + 3), c in prop::sample::select(vec!['x', 'é', '😀'])) {
        let text: String = std::iter::repeat_n(c, n).collect();
        let said = parse(&text);
        let sent = parse(&format!("/msg bob {text}"));
        if n <= MAX_BODY_CHARS {
            prop_assert_eq!(said, Ok(Some(Command::Say(text.clone()))));
            prop_assert_eq!(sent, Ok(Some(Command::Msg(Nick::parse("bob").unwrap(), text))));
        } else {
            prop_assert!(said.is_err());
            prop_assert!(sent.is_err());
        }
    }

    #[test]
    fn parting_messages_are_accepted_up_to_the_limit(n in (MAX_PARTING_CHARS - 3)..(MAX_PARTING_CHARS + 3), c in prop::sample::select(vec!['x', 'é', '😀'])) {
        let text: String = std::iter::repeat_n(c, n).collect();
        let quit = parse(&format!("/quit {text}"));
        let part = parse(&format!("/part #go {text}"));
        if n <= MAX_PARTING_CHARS {
            prop_assert_eq!(quit, Ok(Some(Command::Quit(Some(text.clone())))));
            prop_assert_eq!(part, Ok(Some(Command::Leave(Some(Room::parse("#go").unwrap()), Some(text)))));
        } else {
            prop_assert!(quit.is_err());
            prop_assert!(part.is_err());
        }
    }
}

// ---------------------------------------------------------------- history merge

/// One conversation's messages from 2-4 authors, each with one or two
/// incarnations and seqs 1..n, lamports drawn freely (ties included).
fn a_history() -> impl Strategy<Value = Vec<ChatMessage>> {
    let author = (
        "[A-Za-z][A-Za-z0-9_-]{0,6}",
        prop::collection::vec((1u64..=u64::MAX, 1usize..6), 1..=2),
    );
    prop::collection::vec(author, 2..=4).prop_flat_map(|authors| {
        // Keep authors distinct without case, and incarnations distinct.
        let mut seen = BTreeMap::new();
        for (nick, incs) in authors {
            seen.entry(nick.to_ascii_lowercase())
                .or_insert((nick, incs));
        }
        let mut ids = Vec::new();
        for (nick, incs) in seen.into_values() {
            let mut used = std::collections::BTreeSet::new();
            for (inc, n) in incs {
                if used.insert(inc) {
                    for seq in 1..=n as u64 {
                        ids.push((nick.clone(), inc, seq));
                    }
                }
            }
        }
        let len = ids.len();
        (
            Just(ids),
            prop::collection::vec((1u64..12, any::<i64>(), "[a-z é]{1,12}"), len),
        )
            .prop_map(|(ids, extra)| {
                ids.into_iter()
                    .zip(extra)
                    .map(
                        |((author, incarnation, seq), (lamport, sent_at_ms, body))| ChatMessage {
                            conversation: "#merge".into(),
                            author,
                            incarnation,
                            seq,
                            lamport,
                            sent_at_ms,
                            body,
                            signature: Vec::new(),
                            kind: 0,
                        },
                    )
                    .collect()
            })
    })
}

/// One way the messages may reach a store: an order (a shuffle), some
/// duplicates, and how they are cut into single inserts and batches.
#[derive(Debug, Clone)]
struct Arrival {
    order: Vec<Index>,
    dups: Vec<Index>,
    cuts: Vec<(usize, bool)>,
}

fn an_arrival() -> impl Strategy<Value = Arrival> {
    (
        prop::collection::vec(any::<Index>(), 64),
        prop::collection::vec(any::<Index>(), 0..12),
        prop::collection::vec((1usize..6, any::<bool>()), 1..40),
    )
        .prop_map(|(order, dups, cuts)| Arrival { order, dups, cuts })
}

impl Arrival {
    /// The messages in arrival order, duplicates included.
    fn sequence(&self, msgs: &[ChatMessage]) -> Vec<ChatMessage> {
        let mut pool: Vec<ChatMessage> = msgs.to_vec();
        // Fisher-Yates driven by the drawn indices.
        for i in (1..pool.len()).rev() {
            let j = self.order[i % self.order.len()].index(i + 1);
            pool.swap(i, j);
        }
        for d in &self.dups {
            let m = pool[d.index(pool.len())].clone();
            let at = d.index(pool.len() + 1);
            pool.insert(at, m);
        }
        pool
    }

    /// Stores them, alternating single inserts and batches as drawn.
    async fn deliver(&self, store: &Store, msgs: &[ChatMessage]) {
        let seq = self.sequence(msgs);
        let mut rest = &seq[..];
        let mut cuts = self.cuts.iter().cycle();
        while !rest.is_empty() {
            let &(n, batch) = cuts.next().unwrap();
            let (now, later) = rest.split_at(n.min(rest.len()));
            if batch {
                store.insert_many(now.to_vec()).await.unwrap();
            } else {
                for m in now {
                    store.insert(m.clone()).await.unwrap();
                }
            }
            rest = later;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn merging_in_any_order_with_duplicates_gives_the_same_history(
        msgs in a_history(),
        first in an_arrival(),
        second in an_arrival(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a.db")).unwrap();
        let b = Store::open(&dir.path().join("b.db")).unwrap();
        let (ha, va, hb, vb) = rt.block_on(async {
            first.deliver(&a, &msgs).await;
            second.deliver(&b, &msgs).await;
            (
                a.all("#merge").await.unwrap(),
                a.version("#merge").await.unwrap(),
                b.all("#merge").await.unwrap(),
                b.version("#merge").await.unwrap(),
            )
        });
        prop_assert_eq!(&ha, &hb);
        prop_assert_eq!(&va, &vb);

        // Exactly the messages, each once, in display order.
        let mut want = msgs.clone();
        want.sort_by_key(OrderKey::of);
        prop_assert_eq!(&ha, &want);
        prop_assert!(ha.windows(2).all(|w| OrderKey::of(&w[0]) < OrderKey::of(&w[1])));
        prop_assert_eq!(va.count, msgs.len() as u64);

        // Every incarnation is complete from 1, so the vector covers all.
        let mut top: BTreeMap<(String, u64), (String, u64)> = BTreeMap::new();
        for m in &msgs {
            let e = top
                .entry((m.author.to_ascii_lowercase(), m.incarnation))
                .or_insert((m.author.clone(), 0));
            e.1 = e.1.max(m.seq);
        }
        let got: Vec<(String, u64, u64)> = va
            .vector
            .iter()
            .map(|v| (v.author.to_ascii_lowercase(), v.incarnation, v.seq))
            .collect();
        let want_vec: Vec<(String, u64, u64)> = top
            .into_iter()
            .map(|((lower, inc), (_, seq))| (lower, inc, seq))
            .collect();
        prop_assert_eq!(got, want_vec);
        drop((a, b));
    }
}
