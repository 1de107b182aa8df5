//! The peer's picture of the world: who is online at which address, and who
//! sits in each room this peer has joined. Built from the router's snapshots
//! (login, join) and kept current by its `Watch` events, so a send needs no
//! lookup.
//!
//! Every registry change carries a revision. A join snapshot says which
//! revision it reflects; events at or below it are already in it, and events
//! above it that arrived first (the watch stream can overtake the join's
//! answer) are replayed from a short log.
//!
//! A snapshot can miss members that are still there: right after a router
//! restart, those that have not logged in again yet. So a member that a
//! snapshot drops without a `MemberLeft` event stays *absent* for a while
//! ([`ABSENT_FOR`]): sends owe it the message (an outbox row) instead of
//! forgetting it, and a message from it is neither taken nor refused until
//! the router can say.
//!
//! A member whose session ended while in a room (it quit, or its lease ran
//! out) is *resting* there: it rejoins when it comes back, so sends still
//! owe it the message, which its sender seals into its mailbox at the
//! router. It stops resting when it comes back, or leaves the room (up to
//! [`MAX_RESTING`] per room, the longest resting dropped first).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::registry_event::Kind;
use crate::proto::{Departure, Member, RegistryEvent};

/// Recent events kept to replay over a snapshot that arrives late.
const LOG_LEN: usize = 4096;
/// How long a member dropped by a snapshot stays absent: every live peer
/// logs in again within a lease or two of a router's return.
pub const ABSENT_FOR: Duration = Duration::from_secs(60);

/// Most resting members kept per room.
pub const MAX_RESTING: usize = 1024;

/// What the picture says of a nick in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Member,
    /// Dropped by a snapshot, not seen leaving: maybe still there.
    Absent,
    /// Not in the picture (or this peer is not in the room).
    Unknown,
}

/// What an applied event means to this peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Nothing,
    /// A user came online (an outbox may now be flushed to it).
    Online(Member),
    /// One of this peer's rooms was deleted (by whom).
    RoomGone {
        room: String,
        by: String,
    },
    /// `nick` joined (or left) one of this peer's rooms: one not in the
    /// picture before (or one that was). Members a snapshot dropped and
    /// that come back are not news; nor are events the picture holds.
    /// `departure`, when it left: the room only, or its session ended (it
    /// quit, or its lease ran out); [`Departure::Left`] for a join.
    /// `message`: the parting message of a leave or a quit, empty for none
    /// (and for a join).
    Presence {
        room: String,
        nick: String,
        joined: bool,
        departure: Departure,
        message: String,
    },
}

#[derive(Debug, Clone)]
struct RoomView {
    name: String,
    revision: u64,
    /// Nick key → member.
    members: BTreeMap<String, Member>,
    /// Nick key → (nick as written, since when): see the module doc.
    absent: BTreeMap<String, (String, Instant)>,
    /// Nick key → (nick as written, since when): members whose session
    /// ended in the room (see the module doc).
    resting: BTreeMap<String, (String, Instant)>,
}

#[derive(Default)]
struct State {
    /// Nick key → member, for every online user.
    users: HashMap<String, Member>,
    /// Room key → view, for the rooms this peer sits in.
    rooms: HashMap<String, RoomView>,
    /// Room key → its owner, as the router last said (join, find).
    owners: HashMap<String, String>,
    log: VecDeque<RegistryEvent>,
}

/// The picture, behind one lock held only for map updates.
#[derive(Default)]
pub struct World {
    state: Mutex<State>,
}

/// Whether a member dropped by a snapshot at `since` still counts as absent.
fn still_absent(since: &Instant) -> bool {
    since.elapsed() < ABSENT_FOR
}

fn key(nick: &str) -> String {
    nick.to_ascii_lowercase()
}

impl World {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain maps: a panic elsewhere cannot leave them half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the set of online users (after login or a re-opened watch).
    pub fn set_users(&self, users: Vec<Member>) {
        let mut s = self.lock();
        s.users = users.into_iter().map(|m| (key(&m.nick), m)).collect();
    }

    /// Records this peer in `room` with the members of a snapshot taken at
    /// `revision`, then replays newer events already seen.
    pub fn set_room(&self, name: &str, members: Vec<Member>, revision: u64) {
        let mut s = self.lock();
        let room_key = key(name);
        let mut view = RoomView {
            name: name.to_owned(),
            revision,
            members: BTreeMap::new(),
            absent: BTreeMap::new(),
            resting: BTreeMap::new(),
        };
        for m in members {
            s.users.insert(key(&m.nick), m.clone());
            view.members.insert(key(&m.nick), m);
        }
        if let Some(old) = s.rooms.get(&room_key) {
            let now = Instant::now();
            let dropped = old
                .members
                .iter()
                .map(|(k, m)| (k.clone(), (m.nick.clone(), now)))
                .chain(old.absent.clone())
                .filter(|(k, (_, since))| !view.members.contains_key(k) && still_absent(since));
            view.absent = dropped.collect();
            view.resting = old
                .resting
                .iter()
                .filter(|(k, _)| !view.members.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        let later: Vec<RegistryEvent> = s
            .log
            .iter()
            .filter(|e| e.revision > revision)
            .cloned()
            .collect();
        s.rooms.insert(room_key, view);
        for e in later {
            // Replayed over the snapshot: said already, or from before the
            // join.
            if let Some(Kind::NickChanged(n)) = &e.kind {
                if let Some(m) = &n.member {
                    rename(&mut s, &n.old, &m.nick, Some(e.revision));
                }
            }
            let _ = apply_room_event(&mut s, &e);
        }
    }

    /// Forgets `room` (this peer left it).
    pub fn drop_room(&self, room: &str) {
        let mut s = self.lock();
        s.rooms.remove(&key(room));
        s.owners.remove(&key(room));
    }

    /// Records `room`'s owner as the router reports it (empty: it did not
    /// say, and the last word stands).
    pub fn set_owner(&self, room: &str, owner: &str) {
        if !owner.is_empty() {
            self.lock().owners.insert(key(room), owner.to_owned());
        }
    }

    /// The owner of `room`, one this peer sits in, as the router reported
    /// it; None when not in the room or never told.
    pub fn owner(&self, room: &str) -> Option<String> {
        let s = self.lock();
        let room = key(room);
        s.rooms.get(&room)?;
        s.owners.get(&room).cloned()
    }

    /// A new session began (the router may have restarted and counts
    /// revisions afresh): events logged so far mean nothing to the next
    /// snapshots, and every room takes whatever comes until its snapshot.
    pub fn new_session(&self) {
        let mut s = self.lock();
        s.log.clear();
        for view in s.rooms.values_mut() {
            view.revision = 0;
        }
    }

    pub fn in_room(&self, room: &str) -> bool {
        self.lock().rooms.contains_key(&key(room))
    }

    /// The rooms this peer sits in, as first written.
    pub fn my_rooms(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().rooms.values().map(|r| r.name.clone()).collect();
        v.sort();
        v
    }

    /// Members of `room` (this peer included), or None when not in it.
    pub fn members(&self, room: &str) -> Option<Vec<Member>> {
        self.lock()
            .rooms
            .get(&key(room))
            .map(|r| r.members.values().cloned().collect())
    }

    /// Members of `room` without this peer's own nick `me`: those online
    /// (with addresses) and those absent or resting (nicks only). None when
    /// not in it.
    pub fn recipients(&self, room: &str, me: &str) -> Option<(Vec<Member>, Vec<String>)> {
        let s = self.lock();
        let view = s.rooms.get(&key(room))?;
        let me = key(me);
        let present = view
            .members
            .iter()
            .filter(|(k, _)| **k != me)
            .map(|(_, m)| m.clone())
            .collect();
        let absent = view
            .absent
            .iter()
            .filter(|(k, (_, since))| **k != me && still_absent(since))
            .map(|(_, (nick, _))| nick.clone())
            .chain(
                view.resting
                    .iter()
                    .filter(|(k, _)| **k != me && !view.absent.contains_key(*k))
                    .map(|(_, (nick, _))| nick.clone()),
            )
            .collect();
        Some((present, absent))
    }

    /// Whether the picture of `room` holds members that a snapshot
    /// dropped and that have not come back: then it is worth asking the
    /// router afresh before a send.
    pub fn has_absent(&self, room: &str) -> bool {
        self.lock()
            .rooms
            .get(&key(room))
            .is_some_and(|r| r.absent.values().any(|(_, since)| still_absent(since)))
    }

    pub fn is_member(&self, room: &str, nick: &str) -> bool {
        self.membership(room, nick) == Membership::Member
    }

    pub fn membership(&self, room: &str, nick: &str) -> Membership {
        let s = self.lock();
        let Some(view) = s.rooms.get(&key(room)) else {
            return Membership::Unknown;
        };
        let k = key(nick);
        if view.members.contains_key(&k) {
            Membership::Member
        } else if view
            .absent
            .get(&k)
            .is_some_and(|(_, since)| still_absent(since))
        {
            Membership::Absent
        } else {
            Membership::Unknown
        }
    }

    /// The online user holding `nick`, if this peer knows of one.
    pub fn user(&self, nick: &str) -> Option<Member> {
        self.lock().users.get(&key(nick)).cloned()
    }

    /// `old` goes by `new` now (a nick change: this peer's own, told by
    /// the router's answer, or another's, told by its watch): the same
    /// member, online and in the same rooms, under the new nick.
    pub fn rename(&self, old: &str, new: &str) {
        let mut s = self.lock();
        rename(&mut s, old, new, None);
    }

    /// Applies one watch event and says what it means to this peer.
    pub fn apply(&self, event: RegistryEvent) -> Change {
        let mut s = self.lock();
        if s.log.len() == LOG_LEN {
            s.log.pop_front();
        }
        s.log.push_back(event.clone());
        let change = match &event.kind {
            Some(Kind::UserOnline(m)) => {
                s.users.insert(key(&m.nick), m.clone());
                Change::Online(m.clone())
            }
            Some(Kind::UserOffline(m)) => {
                // A reclaim ends an old session after the new one began: only
                // drop the user if the address is the one going away.
                let k = key(&m.nick);
                if s.users.get(&k).is_some_and(|u| u.address == m.address) {
                    s.users.remove(&k);
                }
                Change::Nothing
            }
            Some(Kind::NickChanged(n)) => {
                if let Some(m) = &n.member {
                    rename(&mut s, &n.old, &m.nick, Some(event.revision));
                }
                Change::Nothing
            }
            Some(Kind::RoomDeleted(d)) => match s.rooms.remove(&key(&d.room)) {
                Some(view) => Change::RoomGone {
                    room: view.name,
                    by: d.by.clone(),
                },
                None => Change::Nothing,
            },
            _ => Change::Nothing,
        };
        match apply_room_event(&mut s, &event) {
            Some(presence) if change == Change::Nothing => presence,
            _ => change,
        }
    }
}

/// Moves `old` to `new` among the online users and in every room view
/// holding it (absent or resting too); `revision`: the event's, when from
/// the watch (a view at or past it has the new nick already).
fn rename(s: &mut State, old: &str, new: &str, revision: Option<u64>) {
    let (ok, nk) = (key(old), key(new));
    let renamed = |m: Member| Member {
        nick: new.to_owned(),
        ..m
    };
    if let Some(m) = s.users.remove(&ok) {
        s.users.insert(nk.clone(), renamed(m));
    }
    for view in s.rooms.values_mut() {
        if revision.is_some_and(|r| r <= view.revision) {
            continue;
        }
        if let Some(m) = view.members.remove(&ok) {
            view.members.insert(nk.clone(), renamed(m));
            if let Some(r) = revision {
                view.revision = r;
            }
        }
        if let Some((_, since)) = view.absent.remove(&ok) {
            view.absent.insert(nk.clone(), (new.to_owned(), since));
        }
        if let Some((_, since)) = view.resting.remove(&ok) {
            view.resting.insert(nk.clone(), (new.to_owned(), since));
        }
    }
}

/// Applies a membership event to the room it names, if this peer is in it
/// and the event is newer than the picture. Returns the presence change a
/// person would care about: someone new in the room, or someone the picture
/// had leaving it.
fn apply_room_event(s: &mut State, e: &RegistryEvent) -> Option<Change> {
    let (rm, joined) = match &e.kind {
        Some(Kind::MemberJoined(rm)) => (rm, true),
        Some(Kind::MemberLeft(rm)) => (rm, false),
        _ => return None,
    };
    // A value this peer does not know reads as a leave.
    let (departure, message) = if joined {
        (Departure::Left, String::new())
    } else {
        (rm.departure(), rm.message.clone())
    };
    let member = rm.member.as_ref()?;
    let view = s.rooms.get_mut(&key(&rm.room))?;
    if e.revision <= view.revision {
        return None;
    }
    view.revision = e.revision;
    let k = key(&member.nick);
    let was_absent = view
        .absent
        .remove(&k)
        .is_some_and(|(_, since)| still_absent(&since));
    view.resting.remove(&k);
    if !joined && departure != Departure::Left {
        if view.resting.len() >= MAX_RESTING {
            let oldest = view
                .resting
                .iter()
                .min_by_key(|(_, (_, since))| *since)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                view.resting.remove(&oldest);
            }
        }
        view.resting
            .insert(k.clone(), (member.nick.clone(), Instant::now()));
    }
    let was_member = if joined {
        view.members.insert(k, member.clone()).is_some()
    } else {
        view.members.remove(&k).is_some()
    };
    let news = if joined {
        !was_member && !was_absent
    } else {
        was_member || was_absent
    };
    news.then(|| Change::Presence {
        room: view.name.clone(),
        nick: member.nick.clone(),
        joined,
        departure,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::RoomMember;

    fn m(n: &str) -> Member {
        Member {
            nick: n.into(),
            address: format!("{n}:1"),
            key: Vec::new(),
            relay: String::new(),
        }
    }

    fn ev(rev: u64, kind: Kind) -> RegistryEvent {
        RegistryEvent {
            revision: rev,
            kind: Some(kind),
        }
    }

    #[test]
    fn events_that_overtake_the_snapshot_are_replayed() {
        let w = World::default();
        // Carol's join (rev 6) arrives before our snapshot at rev 5.
        w.apply(ev(
            6,
            Kind::MemberJoined(RoomMember {
                room: "#r".into(),
                member: Some(m("carol")),
                ..Default::default()
            }),
        ));
        // A stale event at rev 4 is already in the snapshot.
        w.apply(ev(
            4,
            Kind::MemberLeft(RoomMember {
                room: "#r".into(),
                member: Some(m("bob")),
                ..Default::default()
            }),
        ));
        w.set_room("#R", vec![m("alice"), m("bob")], 5);
        let mut nicks: Vec<_> = w
            .members("#r")
            .unwrap()
            .into_iter()
            .map(|m| m.nick)
            .collect();
        nicks.sort();
        assert_eq!(nicks, ["alice", "bob", "carol"]);
        assert!(w.is_member("#r", "CAROL"));
        assert_eq!(w.my_rooms(), ["#R"]);
    }

    #[test]
    fn a_member_a_snapshot_drops_is_absent_not_forgotten() {
        let w = World::default();
        w.set_room("#r", vec![m("alice"), m("bob"), m("carol")], 7);
        // The router restarted: only alice and carol are back so far.
        w.new_session();
        w.set_room("#r", vec![m("alice"), m("carol")], 2);
        assert_eq!(w.membership("#r", "bob"), Membership::Absent);
        let (present, absent) = w.recipients("#r", "alice").unwrap();
        assert_eq!(present, vec![m("carol")]);
        assert_eq!(absent, vec!["bob".to_string()]);
        // Bob's join (revision 3 of the new router) makes him a member again.
        w.apply(ev(
            3,
            Kind::MemberJoined(RoomMember {
                room: "#r".into(),
                member: Some(m("bob")),
                ..Default::default()
            }),
        ));
        assert_eq!(w.membership("#r", "bob"), Membership::Member);
        let (present, absent) = w.recipients("#r", "alice").unwrap();
        assert_eq!(present.len(), 2);
        assert!(absent.is_empty());
        // One seen leaving is gone, not absent.
        w.apply(ev(
            4,
            Kind::MemberLeft(RoomMember {
                room: "#r".into(),
                member: Some(m("carol")),
                ..Default::default()
            }),
        ));
        assert_eq!(w.membership("#r", "carol"), Membership::Unknown);
    }

    #[test]
    fn a_member_whose_session_ended_rests_until_it_returns_or_leaves() {
        let w = World::default();
        w.set_room("#r", vec![m("alice"), m("bob"), m("carol"), m("dave")], 1);
        let left = |rev, n: &str, departure: Departure| {
            ev(
                rev,
                Kind::MemberLeft(RoomMember {
                    room: "#r".into(),
                    member: Some(m(n)),
                    departure: departure as i32,
                    ..Default::default()
                }),
            )
        };
        w.apply(left(2, "bob", Departure::Quit));
        w.apply(left(3, "carol", Departure::TimedOut));
        w.apply(left(4, "dave", Departure::Left));
        let (present, mut owed) = w.recipients("#r", "alice").unwrap();
        owed.sort();
        assert!(present.is_empty());
        assert_eq!(owed, vec!["bob".to_string(), "carol".to_string()]);
        // A snapshot without them keeps them resting.
        w.set_room("#r", vec![m("alice")], 5);
        let (_, mut owed) = w.recipients("#r", "alice").unwrap();
        owed.sort();
        assert_eq!(owed, vec!["bob".to_string(), "carol".to_string()]);
        // Bob is back: a member, owed nothing by name; carol leaves for good.
        w.apply(joined(6, "#r", "bob"));
        w.apply(left(7, "carol", Departure::Left));
        let (present, owed) = w.recipients("#r", "alice").unwrap();
        assert_eq!(present, vec![m("bob")]);
        assert!(owed.is_empty(), "{owed:?}");
    }

    fn joined(rev: u64, room: &str, n: &str) -> RegistryEvent {
        ev(
            rev,
            Kind::MemberJoined(RoomMember {
                room: room.into(),
                member: Some(m(n)),
                ..Default::default()
            }),
        )
    }

    fn left(rev: u64, room: &str, n: &str) -> RegistryEvent {
        ev(
            rev,
            Kind::MemberLeft(RoomMember {
                room: room.into(),
                member: Some(m(n)),
                ..Default::default()
            }),
        )
    }

    fn presence(room: &str, nick: &str, joined: bool) -> Change {
        Change::Presence {
            room: room.into(),
            nick: nick.into(),
            joined,
            departure: Departure::Left,
            message: String::new(),
        }
    }

    #[test]
    fn comings_and_goings_are_news_only_once() {
        let w = World::default();
        w.set_room("#R", vec![m("alice"), m("bob")], 1);
        assert_eq!(
            w.apply(joined(2, "#r", "carol")),
            presence("#R", "carol", true)
        );
        // Said already, or older than the picture: not news.
        assert_eq!(w.apply(joined(3, "#r", "carol")), Change::Nothing);
        assert_eq!(w.apply(left(2, "#r", "bob")), Change::Nothing);
        assert_eq!(w.apply(left(4, "#r", "bob")), presence("#R", "bob", false));
        assert_eq!(w.apply(left(5, "#r", "dave")), Change::Nothing);
        // Rooms this peer is not in say nothing.
        assert_eq!(w.apply(joined(6, "#other", "erin")), Change::Nothing);
        // A leave because the session ended says how it ended: a quit, a
        // lease run out; a reason this peer does not know is a leave. The
        // parting message comes along as the router gave it.
        let mut rev = 6;
        for (wire, departure, message) in [
            (Departure::Quit as i32, Departure::Quit, "bye all"),
            (Departure::TimedOut as i32, Departure::TimedOut, ""),
            (99, Departure::Left, "see ya"),
        ] {
            rev += 1;
            assert_eq!(
                w.apply(joined(rev, "#r", "dave")),
                presence("#R", "dave", true)
            );
            rev += 1;
            let mut gone = left(rev, "#r", "dave");
            if let Some(Kind::MemberLeft(rm)) = &mut gone.kind {
                rm.departure = wire;
                rm.message = message.into();
            }
            assert_eq!(
                w.apply(gone),
                Change::Presence {
                    room: "#R".into(),
                    nick: "dave".into(),
                    joined: false,
                    departure,
                    message: message.into(),
                }
            );
        }
        // Going offline drops the user; the end of an old session whose
        // nick is already back at another address does not.
        w.set_users(vec![m("bob"), m("carol")]);
        assert_eq!(
            w.apply(ev(rev + 1, Kind::UserOffline(m("bob")))),
            Change::Nothing
        );
        assert!(w.user("bob").is_none());
        let old = Member {
            address: "elsewhere:1".into(),
            ..m("carol")
        };
        assert_eq!(
            w.apply(ev(rev + 2, Kind::UserOffline(old))),
            Change::Nothing
        );
        assert!(w.user("carol").is_some());
        // A router restart: a member the snapshot dropped that joins again
        // was never gone, as far as a person can tell.
        w.new_session();
        w.set_room("#R", vec![m("alice")], 1);
        assert_eq!(w.apply(joined(2, "#r", "carol")), Change::Nothing);
        assert!(w.is_member("#r", "carol"));
    }

    #[test]
    fn deletion_and_presence() {
        let w = World::default();
        w.set_room("#r", vec![m("alice")], 1);
        assert_eq!(
            w.apply(ev(2, Kind::UserOnline(m("bob")))),
            Change::Online(m("bob"))
        );
        assert_eq!(w.user("Bob"), Some(m("bob")));
        w.apply(ev(3, Kind::UserOffline(m("bob"))));
        assert_eq!(w.user("bob"), None);
        let change = w.apply(ev(
            4,
            Kind::RoomDeleted(crate::proto::RoomDeleted {
                room: "#r".into(),
                by: "alice".into(),
            }),
        ));
        assert_eq!(
            change,
            Change::RoomGone {
                room: "#r".into(),
                by: "alice".into()
            }
        );
        assert!(!w.in_room("#r"));
    }

    #[test]
    fn a_rooms_owner_is_the_routers_last_word_while_in_the_room() {
        let w = World::default();
        w.set_owner("#R", "alice");
        assert_eq!(w.owner("#r"), None, "not in the room");
        w.set_room("#R", vec![m("alice"), m("bob")], 1);
        assert_eq!(w.owner("#r").as_deref(), Some("alice"));
        // Saying nothing leaves the last word.
        w.set_owner("#r", "");
        assert_eq!(w.owner("#R").as_deref(), Some("alice"));
        w.drop_room("#r");
        assert_eq!(w.owner("#r"), None);
    }
}
