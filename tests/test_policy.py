"""The decision policy, pure: every rule, frame by frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge.errors import ConfigError
from edge.gate.policy import (
    DENY,
    FACE,
    FACE_AND_TICKET,
    GRANT,
    TICKET,
    Decision,
    FaceSeen,
    Observation,
    Policy,
    PolicyParams,
    TicketSeen,
    check_non_face_way_in,
)
from edge.tickets import Reason as TicketReason
from edge.tickets import Ticket, Verdict

FPS = 10.0


def face(pid, score=0.95, w=0.2, c=(0.5, 0.5), ok=True, valid_until=None, pass_ref=""):
    return FaceSeen(pid, score, w, c, ok, valid_until, pass_ref)


def run(policy, frames, t0=0.0, wall=1_800_000_000.0):
    """frames: list of (faces, tickets); returns decisions with frame numbers."""
    out = []
    for i, (faces, tickets) in enumerate(frames):
        out += policy.step(Observation(t0 + i / FPS, i, wall, tuple(faces), tuple(tickets)))
    return out


def test_k_of_n_confirmation_grants_once():
    p = Policy(PolicyParams(k=3, n=5))
    ds = run(p, [([face("A")], [])] * 10)
    assert [(d.decision, d.via, d.subject, d.frame) for d in ds] == [(GRANT, FACE, "A", 2)]


def test_matches_must_agree_and_fall_in_window():
    p = Policy(PolicyParams(k=3, n=4, window_s=2.0))
    alternating = [([face("A" if i % 2 else "B")], []) for i in range(40)]
    assert run(p, alternating) == []  # never 3 of the last 4 for one person
    p = Policy(PolicyParams(k=3, n=5, window_s=0.5))
    sparse = []
    for _ in range(3):  # one match, then 9 frames of nobody: matches never within 0.5 s
        sparse += [([face("A")], [])] + [([], [])] * 9
    assert run(p, sparse) == []


def test_stranger_never_granted_and_reported_once():
    p = Policy(PolicyParams(k=3, n=5, window_s=2.0))
    ds = run(p, [([face(None, 0.90)], [])] * 100)
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "not_enrolled")]
    assert ds[0].t >= 4.0  # said only after the face has stood at the gate two windows


def test_no_not_enrolled_for_a_person_who_was_granted():
    p = Policy(PolicyParams(k=3, n=5, window_s=2.0, cooldown_s=1000, anti_passback_s=1000))
    frames = [([face("A")], [])] * 3 + [([face(None, 0.9)], [])] * 60
    assert [d.decision for d in run(p, frames)] == [GRANT]


def looking(pid, vec, candidate=None):
    """A face with an embedding (a unit vector; the tests use a few axes of 4-D)."""
    v = np.asarray(vec, np.float32)
    return dataclasses.replace(face(pid), embedding=v / np.linalg.norm(v), candidate=candidate)


ANN, ANN_TURNED, BOB, CAROL = (1, 0, 0, 0), (0.8, 0.6, 0, 0), (0, 0, 1, 0), (0, 0, 0.1, 1)


def queue_policy(**kw) -> Policy:
    params = dict(k=3, n=5, window_s=2.0, cooldown_s=1000, anti_passback_s=1000)
    return Policy(PolicyParams(**{**params, **kw}), same_person=0.6)


def test_a_stranger_right_behind_a_pass_holder_let_in_is_told_not_enrolled():
    """Before, the stranger stepping up with no gap after a grant shared the pass holder's visit
    and was never told to show a ticket. Now k frames in a row of a face that matches nobody and
    is unlike the visitor's start the next visit."""
    p = queue_policy()
    frames = [([looking("A", ANN)], [])] * 5 + [([looking(None, BOB)], [])] * 60
    ds = run(p, frames)
    assert [(d.decision, d.subject, d.reason) for d in ds] == [
        (GRANT, "A", "ok"),
        (DENY, None, "not_enrolled"),
    ]
    assert ds[1].t >= 0.5 + 4.0  # two windows after the stranger's visit began, as for anyone


def test_the_visitor_let_in_is_not_refused_when_their_face_stops_matching():
    """Their own face, turned or blurred so that it matches nobody, is still like their last
    frame: the visit (and its grant) holds; a few frames of someone else in between do too."""
    p = queue_policy()
    frames = [([looking("A", ANN)], [])] * 5 + [([looking(None, ANN_TURNED)], [])] * 60
    assert [d.decision for d in run(p, frames)] == [GRANT]
    p = queue_policy()
    flicker = [([looking(None, BOB)], [])] * 2 + [([looking(None, ANN)], [])] * 3
    frames = [([looking("A", ANN)], [])] * 5 + flicker * 12
    assert [d.decision for d in run(p, frames)] == [GRANT]


def test_someone_passing_in_front_of_the_visitor_let_in_does_not_end_their_visit():
    """Three frames of another face (0.3 s), then the visitor's own face, turned: they were let
    in and stay so. Counted by frames alone the passer-by began a visit, and the visitor's turned
    face after it another, refused not_enrolled after their welcome."""
    p = queue_policy()
    frames = [([looking("A", ANN)], [])] * 5 + [([looking(None, BOB)], [])] * 3
    frames += [([looking(None, ANN_TURNED)], [])] * 60
    assert [d.decision for d in run(p, frames)] == [GRANT]


def test_two_strangers_seen_in_turn_are_told_once():
    """Two faces matching nobody, each seen for three frames in turn (the detector finding one,
    then the other): one visit, told once, as before visits were told apart by faces; and right
    behind someone let in, they are told once after the grant."""
    turns = ([([looking(None, BOB)], [])] * 3 + [([looking(None, CAROL)], [])] * 3) * 15
    ds = run(queue_policy(), turns)
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "not_enrolled")]
    ds = run(queue_policy(), [([looking("A", ANN)], [])] * 5 + turns)
    assert [(d.decision, d.reason) for d in ds] == [(GRANT, "ok"), (DENY, "not_enrolled")]


def test_strangers_one_after_another_are_each_told_and_a_ticket_holder_is_not():
    p = queue_policy()
    frames = [([looking(None, BOB)], [])] * 50 + [([looking(None, CAROL)], [])] * 50
    ds = run(p, frames)
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "not_enrolled")] * 2
    # let in by a ticket, then their own unmatched face: nothing more is said to them; the
    # stranger after them is told
    p = queue_policy()
    frames = [([looking(None, BOB)], [seen("T1")])] + [([looking(None, BOB)], [])] * 50
    frames += [([looking(None, CAROL)], [])] * 50
    ds = run(p, frames)
    assert [(d.decision, d.via, d.reason) for d in ds] == [
        (GRANT, TICKET, "ok"),
        (DENY, FACE, "not_enrolled"),
    ]


def test_a_stranger_who_shows_a_ticket_right_behind_a_pass_holder_is_not_refused():
    """A ticket shown after the visitor's last own face is the next one's: before, it let in
    the visit just ending and the stranger who showed it, k frames later in a visit of their
    own, was refused `not_enrolled` on the way through."""
    for at in (0, 1):  # with the stranger's first frame, or their second
        p = queue_policy()
        bob = [([looking(None, BOB)], [])] * 60
        # held up while the gate is open for the visitor before: judged once it is not
        bob[at : at + 12] = [([looking(None, BOB)], [seen("T1")])] * 12
        ds = run(p, [([looking("A", ANN)], [])] * 5 + bob)
        assert [(d.decision, d.via, d.subject) for d in ds] == [
            (GRANT, FACE, "A"),
            (GRANT, TICKET, "T1"),
        ]
    # the visitor's own ticket, shown with their face, leaves the stranger after them to be told
    p = queue_policy()
    frames = [([looking(None, ANN)], [seen("T1")])] + [([looking(None, ANN)], [])] * 10
    ds = run(p, frames + [([looking(None, BOB)], [])] * 60)
    assert [(d.decision, d.reason) for d in ds] == [(GRANT, "ok"), (DENY, "not_enrolled")]


def test_a_pass_holder_let_in_after_a_stranger_keeps_their_visit_when_they_turn():
    """A pass holder stepping up right behind a stranger (the stranger's visit, confirmed to
    them) is the visitor from then on: before, the faces kept were still the stranger's, so
    their own turned face right after the welcome started another visit and was refused
    `not_enrolled`."""
    p = queue_policy()
    frames = [([looking(None, BOB)], [])] * 10 + [([looking("A", ANN)], [])] * 3
    frames += [([looking(None, ANN_TURNED)], [])] * 60
    assert [(d.decision, d.subject) for d in run(p, frames)] == [(GRANT, "A")]


def test_a_stranger_whose_nearest_pass_holder_is_the_visitor_is_not_kept_as_their_face():
    """The matcher names a stranger's nearest pass holder as candidate (in a gallery of one,
    always the pass holder). A stranger at the gate, a pass holder stepping in front and let
    in, then the stranger alone at the gate for 6 s: the stranger's frames that named the pass
    holder as candidate were kept as the pass holder's faces, so the stranger stayed in the
    visit let in and was never told to show a ticket. Now the pass holder's faces are the
    frames matched to them on their own."""
    bob = [([looking(None, BOB, candidate="A")], [])]
    frames = bob * 10 + [([looking("A", ANN, candidate="A")], [])] * 3 + bob * 60
    ds = run(queue_policy(), frames)
    assert [(d.decision, d.subject, d.reason) for d in ds] == [
        (GRANT, "A", "ok"),
        (DENY, None, "not_enrolled"),
    ]
    # the pass holder's own turned face after the welcome is still theirs
    frames = bob * 10 + [([looking("A", ANN, candidate="A")], [])] * 3
    frames += [([looking(None, ANN_TURNED, candidate="A")], [])] * 60
    assert [(d.decision, d.subject) for d in run(queue_policy(), frames)] == [(GRANT, "A")]


def test_without_embeddings_or_a_bound_visits_are_told_apart_by_matches_alone():
    frames = [([looking("A", ANN)], [])] * 5 + [([looking(None, BOB)], [])] * 60
    p = Policy(PolicyParams(k=3, n=5, window_s=2.0, cooldown_s=1000, anti_passback_s=1000))
    assert [d.decision for d in run(p, frames)] == [GRANT]


def test_a_reload_to_another_embedder_keeps_the_visit_and_compares_no_old_faces():
    """The visitor's faces were embedded by the model before the reload: a new embedder's
    vectors (here of another length) start them again instead of failing every frame."""
    p = queue_policy()
    run(p, [([looking("A", ANN)], [])] * 5)
    q = queue_policy().carry_over(p)
    other = dataclasses.replace(face(None), embedding=np.ones(3, np.float32) / np.sqrt(3))
    assert run(q, [([other], [])] * 60, t0=0.6) == []  # still the visitor let in
    assert q.episode is not None and q.episode.granted


def test_a_face_whose_embedding_is_not_finite_does_not_stand_for_the_visitor():
    """A ticket holder whose first frame's embedding came out NaN (the matcher calls it
    non_finite: nobody): kept as the visitor's face, it was like nobody, so their own face
    after it started another visit, which was refused `not_enrolled` after the ticket let them
    in. A frame that is not finite now keeps the visit, as one with no embedding does."""
    nan = dataclasses.replace(face(None), embedding=np.full(4, np.nan, np.float32))
    frames = [([nan], [seen("T1")])] + [([looking(None, BOB)], [])] * 80
    ds = run(queue_policy(), frames)
    assert [(d.decision, d.via, d.reason) for d in ds] == [(GRANT, TICKET, "ok")]
    # a stranger is still told once, two windows after their first frame (not half a window
    # later, in a visit the NaN frame began)
    ds = run(queue_policy(), [([nan], [])] + [([looking(None, BOB)], [])] * 80)
    assert [(d.reason, d.frame) for d in ds] == [("not_enrolled", 40)]


def test_a_pass_holder_judged_an_attack_stays_refused_after_a_strangers_face():
    """A replay switching to a face that matches nobody starts a new visit; the pass holder it
    showed before is still refused until the gate is left empty."""
    p = queue_policy(liveness=True)
    fake = dataclasses.replace(looking("A", ANN), live=False, pad="model")
    frames = [([fake], [])] * 10 + [([looking(None, BOB)], [])] * 10 + [([fake], [])] * 30
    ds = run(p, frames)
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "presentation_attack")]


def test_with_fused_frames_a_replay_judged_on_frames_matching_nobody_stays_refused():
    """fuse_frames: PAD judges the frames of the best candidate that match nobody on their own,
    so those count as judged not live (only frames never judged count neither way). The replay
    is refused, a stranger's face long enough to begin a new visit lifts nothing, and frames
    judged live after it (the same replay, or the real pass holder) get no grant until the
    gate is left empty; with no verdict at all, no grant either."""
    from edge.gallery.matcher import Match

    def fuse(vs):
        return Match("A", 0.9, 0.5, "A")

    def policy():
        return Policy(
            PolicyParams(
                k=3, n=5, window_s=2.0, cooldown_s=1000, anti_passback_s=1000, liveness=True
            ),
            fuse=fuse,
            same_person=0.6,
        )

    fake = dataclasses.replace(looking(None, ANN, candidate="A"), live=False, pad="model")
    live = dataclasses.replace(looking(None, ANN, candidate="A"), live=True)
    frames = [([fake], [])] * 10 + [([looking(None, BOB)], [])] * 15 + [([live], [])] * 30
    ds = run(policy(), frames)
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "presentation_attack")]
    assert run(policy(), [([looking(None, ANN, candidate="A")], [])] * 30) == []


def test_frames_that_matched_nobody_are_not_counted_as_judged_not_live():
    """A live visitor whose face twice matched nobody on its own (PAD runs only on matched
    frames) and once was missed by the model: counted as three frames not live, they were
    refused as an attack and held out until the gate was left empty. Frames never judged now
    count neither way: they wait for live frames and are let in; a matched frame PAD did not
    judge, and k judged not live, are refused as before."""
    live = dataclasses.replace(face("A"), live=True)
    missed = dataclasses.replace(face("A"), live=False, pad="model")
    unmatched = dataclasses.replace(face(None), candidate="A")  # live None: never asked
    frames = [([f], []) for f in (live, live, unmatched, unmatched, missed, live, live, live)]
    ds = run(Policy(PolicyParams(k=3, n=5, liveness=True)), frames)
    assert [(d.decision, d.reason, d.frame) for d in ds] == [(GRANT, "ok", 7)]
    unjudged = face("A")  # matched, live None: PAD did not judge it
    ds = run(Policy(PolicyParams(k=3, n=5, liveness=True)), [([unjudged], [])] * 5)
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "presentation_attack")]
    ds = run(Policy(PolicyParams(k=3, n=5, liveness=True)), [([missed], [])] * 5)
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "presentation_attack")]


def test_two_faces_at_the_gate_is_tailgating():
    p = Policy(PolicyParams())
    ds = run(p, [([face("A"), face("B", c=(0.2, 0.5))], [])] * 20)
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "tailgating")]


def test_small_faces_and_faces_outside_zone_do_not_count():
    p = Policy(PolicyParams(min_face_fraction=0.1, zone=(0.25, 0.0, 0.75, 1.0)))
    # a bystander far away (tiny) and one outside the zone do not make it tailgating
    frames = [([face("A"), face("B", w=0.03), face("C", c=(0.05, 0.5))], [])] * 5
    assert [(d.decision, d.subject) for d in run(p, frames)] == [(GRANT, "A")]
    p = Policy(PolicyParams(zone=(0.5, 0.0, 1.0, 1.0)))
    assert run(p, [([face("A", c=(0.2, 0.5))], [])] * 10) == []


def test_low_quality_frames_are_ignored():
    p = Policy(PolicyParams())
    assert run(p, [([face("A", ok=False)], [])] * 20) == []


def test_cooldown_then_anti_passback_then_grant_again():
    p = Policy(PolicyParams(k=3, n=5, cooldown_s=5, anti_passback_s=30, window_s=2))
    ds = run(p, [([face("A")], [])] * 3)
    assert [d.decision for d in ds] == [GRANT]
    assert run(p, [([face("A")], [])] * 10, t0=1.0) == []  # within cooldown: still in view
    ds = run(p, [([face("A")], [])] * 10, t0=10.0)
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "anti_passback")]
    ds = run(p, [([face("A")], [])] * 3, t0=40.0)
    assert [d.decision for d in ds] == [GRANT]


def test_expired_pass_is_refused():
    p = Policy(PolicyParams())
    ds = run(p, [([face("A", valid_until=1_700_000_000)], [])] * 5, wall=1_800_000_000.0)
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "pass_expired")]


def seen(tid, valid=True, reason=TicketReason.OK, holder="", scanned=False):
    t = Ticket(tid, holder=holder) if tid else None
    return TicketSeen(f"EG{tid}", Verdict(valid, reason, t), scanned)


def scan(tid, valid=True):
    """A code from a scanner: read once."""
    return seen(tid, valid, scanned=True)


def test_ticket_decided_once_while_in_view_and_again_when_shown_again():
    p = Policy(PolicyParams(cooldown_s=2.0))
    ds = run(p, [([], [seen("T1")])] * 30)
    assert [(d.decision, d.via, d.subject) for d in ds] == [(GRANT, TICKET, "T1")]
    assert ds[0].ticket.ticket_id == "T1"  # the daemon redeems it before opening
    ds = run(p, [([], [seen("T1")])] * 2, t0=10.0)
    assert len(ds) == 1


def test_one_ticket_per_opening_two_codes_in_one_frame_are_two_openings():
    """Two tickets in one frame were both redeemed for one opening (the relay's second pulse
    only held it open longer): one visitor's ticket used with nobody let in on it. The second
    waits, unredeemed, for an opening of its own."""
    p = Policy(PolicyParams(cooldown_s=5.0, open_s=1.0))
    both = ([], [seen("T1"), seen("T2")])
    ds = run(p, [both] * 30)  # 3 s in view at 10 frames/s
    assert [(d.subject, d.frame) for d in ds] == [("T1", 0), ("T2", 10)]
    assert not p.waiting


def test_a_scan_during_an_opening_waits_for_its_own_and_not_for_ever():
    """A code from the scanner is read once: shown while the gate was open for someone else it
    waits (it was neither redeemed nor lost), at most the opening and a window: a holder who
    gave up and left opens nothing later. An invalid code is refused at once."""
    p = Policy(PolicyParams(window_s=2.0, open_s=1.0))
    frames = [([], [scan("T1")])] + [([], [])] * 4 + [([], [scan("T2"), scan("T3", False)])]
    frames += [([], [])] * 10
    ds = run(p, frames)
    assert [(d.decision, d.subject, d.frame) for d in ds] == [
        (GRANT, "T1", 0),
        (DENY, "T3", 5),
        (GRANT, "T2", 10),
    ]
    p = Policy(PolicyParams(window_s=2.0, open_s=1.0))
    ds = run(p, [([face("A")], [])] * 3 + [([face("A")], [scan("T4")])] + [([], [])] * 30)
    assert [(d.via, d.subject) for d in ds] == [(FACE, "A"), (TICKET, "T4")]
    p = Policy(PolicyParams(window_s=0.5, open_s=1.0))  # a window shorter than the opening
    ds = run(p, [([], [scan("T1"), scan("T2"), scan("T3")])] + [([], [])] * 30)
    # T2 waited the opening; T3, one more, waited past the opening and a window: dropped
    assert [(d.subject, d.frame) for d in ds] == [("T1", 0), ("T2", 10)] and not p.waiting


def test_a_code_the_camera_saw_during_an_opening_is_judged_only_when_in_view_again():
    """A visitor let in by face who also held up their ticket while the gate was open for them
    had it redeemed when the opening ended: the gate opened again for nobody (anyone behind
    walked in on it) and their ticket was spent. A code the camera read is in view or not: it
    waits while the gate is open and is judged only when the camera sees it again after."""
    p = Policy(PolicyParams(window_s=2.0, open_s=1.0))
    a = ([face("A")], [])
    ds = run(p, [a] * 3 + [([face("A")], [seen("T4")])] * 3 + [([], [])] * 30)
    assert [(d.via, d.subject) for d in ds] == [(FACE, "A")]  # went through with it
    p = Policy(PolicyParams(window_s=2.0, open_s=1.0))
    ds = run(p, [a] * 3 + [([], [seen("T5")])] * 12)  # the next visitor keeps it up
    assert [(d.via, d.subject, d.frame) for d in ds] == [(FACE, "A", 2), (TICKET, "T5", 12)]


def test_a_grant_not_carried_out_opens_nothing():
    """A ticket grant the daemon turned into a refusal (spent at another lane meanwhile) held a
    second code, in the same frame, a whole opening; the visitor was taken as let in."""
    p = Policy(PolicyParams(cooldown_s=5.0, open_s=1.0))
    first = p.step(Observation(0.0, 0, 1e9, (), (seen("T1"), seen("T2"))))
    assert [d.subject for d in first] == ["T1"]
    p.not_carried_out(first[0])
    assert p.episode is not None and not p.episode.admitted
    ds = run(p, [([], [seen("T2")])] * 5, t0=0.1)
    assert [(d.subject, d.frame) for d in ds] == [("T2", 0)]  # the next frame, not a pulse on
    p.not_carried_out(Decision(0.1, 0, DENY, TICKET, "T9", None, TicketReason.EXPIRED))
    assert p.opened == 0.1  # a refusal was never an opening: nothing to take back
    p.not_carried_out(first[0])  # an older step's grant: T2's opening stands
    assert p.opened == 0.1 and p.episode.admitted


def refusing(p: Policy, frames, refused: set[str]) -> list[tuple]:
    """Run the policy as the daemon does, turning the grants of `refused` into refusals."""
    out = []
    for i, (faces, tickets) in enumerate(frames):
        for d in p.step(Observation(i / FPS, i, 1e9, tuple(faces), tuple(tickets))):
            if d.decision == GRANT and d.subject in refused:
                p.not_carried_out(d)
                d = dataclasses.replace(d, decision=DENY, reason="refused")
            out.append((d.decision, d.via, d.subject, d.reason, i))
    return out


def test_a_face_grant_not_carried_out_is_tried_again_after_the_cooldown():
    """A pass holder whose grant the relay or the audit log refused was held as let in: five
    seconds on they were refused `anti_passback` though they never went through. Now they
    are tried again once the cooldown has passed."""
    p = Policy(PolicyParams(k=3, n=5, window_s=2.0, cooldown_s=5.0, anti_passback_s=60.0))
    ds = refusing(p, [([face("A")], [])] * 80, {"A"})
    assert [(d, r, i) for d, _, _, r, i in ds] == [(DENY, "refused", 2), (DENY, "refused", 52)]
    assert not p.episode.granted


def test_a_spent_ticket_in_the_frame_a_stranger_steps_up_lets_nobody_in():
    """The refused ticket's visit had passed `let in` on to the stranger's visit begun in the
    same frame: the stranger was never told to show a ticket."""
    for at in (14, 15):  # the frame before the visit splits, and the frame it does
        p = queue_policy()
        frames = [([looking("A", ANN)], [])] * 5 + [([looking(None, BOB)], [])] * 80
        frames[at] = ([looking(None, BOB)], [seen("T1")])
        ds = refusing(p, frames, {"T1"})
        assert [(d, r) for d, _, _, r, _ in ds] == [
            (GRANT, "ok"),
            (DENY, "refused"),
            (DENY, "not_enrolled"),
        ], at


def test_a_code_the_camera_read_and_then_scanned_during_an_opening_waits_as_a_scan():
    """Read by the camera during someone's opening, then scanned and lowered: the scan was
    lost (the code waited as the camera's, which is judged only when seen again)."""
    p = Policy(PolicyParams(window_s=2.0, open_s=1.0))
    frames = [([face("A")], [])] * 3 + [([], [seen("T1")]), ([], [scan("T1")])] + [([], [])] * 30
    assert [(d.subject, d.frame) for d in run(p, frames)] == [("A", 2), ("T1", 12)]


def test_invalid_ticket_refused_with_its_reason_and_faces_irrelevant():
    p = Policy(PolicyParams())
    expired = seen("T2", False, TicketReason.EXPIRED)
    ds = run(p, [([face(None), face(None, c=(0.1, 0.1))], [expired])])
    assert (DENY, TICKET, TicketReason.EXPIRED) in [(d.decision, d.via, d.reason) for d in ds]


def test_ticket_only_mode_ignores_faces():
    p = Policy(PolicyParams(mode="ticket-only", face_enabled=False))
    assert run(p, [([face("A")], [])] * 20) == []
    assert [d.decision for d in run(p, [([], [seen("T3")])])] == [GRANT]


def test_face_and_ticket_needs_both_and_the_right_holder():
    params = PolicyParams(mode="face-and-ticket")
    p = Policy(params)
    assert run(p, [([face("A")], [])] * 10) == []  # face alone
    p = Policy(params)
    assert run(p, [([], [seen("T4", holder="A")])] * 3) == []  # ticket alone
    p = Policy(params)
    ds = run(p, [([], [seen("T4", holder="A")])] + [([face("A")], [])] * 5)
    assert [(d.decision, d.via, d.subject, d.ticket.ticket_id) for d in ds] == [
        (GRANT, FACE_AND_TICKET, "A", "T4")
    ]
    p = Policy(params)
    ds = run(p, [([], [seen("T5", holder="B")])] + [([face("A")], [])] * 5)
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "ticket_holder_mismatch")]


def test_no_non_face_way_in_is_refused():
    with pytest.raises(ConfigError, match="no non-face way in"):
        check_non_face_way_in("face-or-ticket", 0)
    check_non_face_way_in("face-or-ticket", 1)


def test_state_is_named_dataclasses_and_decisions_are_enums():
    import json

    from edge.gate.policy import Episode, Outcome, Reason, Via, WindowEntry

    p = Policy(PolicyParams(k=3, n=5))
    run(p, [([face("A", score=0.9)], [])] * 2)
    assert all(isinstance(e, WindowEntry) for e in p.window)
    assert [(e.person_id, e.score) for e in p.window] == [("A", 0.9), ("A", 0.9)]
    assert isinstance(p.episode, Episode)
    assert not p.episode.granted
    (d,) = run(p, [([face("A", score=0.9)], [])], t0=0.2)
    assert (d.decision, d.via, d.reason) == (Outcome.GRANT, Via.FACE, Reason.OK)
    assert p.episode.granted
    # the enums are strings: events and audit records keep their JSON form
    assert json.dumps([d.decision, d.via, d.reason]) == '["grant", "face", "ok"]'


def test_scanner_input_without_a_frame_is_decided():
    p = Policy(PolicyParams())
    ds = p.step(Observation(1.0, -1, 1_800_000_000.0, (), (seen("T9"),)))
    assert [(d.decision, d.subject, d.frame) for d in ds] == [(GRANT, "T9", -1)]
