package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// The archive fallback: when the stream no longer holds what a history
// request or a resuming sub asks for, the edge asks the archivers' history
// service (Config.ArchiveSubject; contract in docs/archiver.md). Whatever
// goes wrong there (no archiver deployed: no responders; a timeout; an
// error) leaves the edge answering from the stream alone, exactly as without
// an archive. Archive messages are re-encoded with protocol.AppendMsg, so a
// client cannot tell them from stream ones.
//
// What the edge may claim (recovered:true, a history reply without a
// reason) rests on one fact: the stream removes a room's messages oldest
// first only (limits, purges; the chat stream denies single-message deletes,
// jetstream/streams.go, and allows no per-message TTL). So once a read has
// reached the room's oldest message in the stream, everything the reply
// could have skipped lies below it, in a stretch (lo, before) of stream
// sequences that holds none of the room's messages still stored. Each
// sequence there is either archived (the archive says how far it holds
// every sequence, ArchiveCoverage) or still in the stream, and then another
// room's message; if some sequence is neither, it may have been this room's
// message, and the edge says so.

// archiveQuery asks the archive for a room's messages and returns them as
// deliveries, oldest first, each checked to belong to the room and to lie
// within (after, before).
func (e *Edge) archiveQuery(ctx context.Context, req pjs.ArchiveHistoryRequest) ([]Delivery, *pjs.ArchiveHistoryResponse, error) {
	resp, err := e.backend.ArchiveHistory(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	out := make([]Delivery, 0, len(resp.Msgs))
	var prev uint64
	for _, raw := range resp.Msgs {
		var msg protocol.Msg
		if err := json.Unmarshal(raw, &msg); err != nil {
			return nil, nil, fmt.Errorf("archive message: %w", err)
		}
		if msg.Op != protocol.OpMsg || msg.Room != req.Room || msg.To != "" || msg.Seq <= prev ||
			(req.Before > 0 && msg.Seq >= req.Before) || (req.After != nil && msg.Seq <= *req.After) {
			return nil, nil, fmt.Errorf("archive message seq %d of room %q is not what was asked for", msg.Seq, msg.Room)
		}
		prev = msg.Seq
		frame := protocol.AppendMsg(make([]byte, 0, len(raw)+16), &msg)
		out = append(out, Delivery{Seq: msg.Seq, Frame: frame})
	}
	return out, resp, nil
}

// archiveFailed logs why the archive did not help; no responders is the
// normal state of a mesh without archivers and is not worth a warning.
func (e *Edge) archiveFailed(what, room string, err error) {
	if errors.Is(err, errNoArchive) {
		e.log.Debug("no archive answering", "op", what, "room", room)
		return
	}
	e.log.Warn("archive fallback failed; answering from the stream alone", "op", what, "room", room, "err", err)
}

// streamCheckMax bounds how many sequences vouched reads from the stream to
// see that those the archive has not committed yet are still there (an
// archiver a little behind); a longer stretch is not vouched for.
const streamCheckMax = 1024

// vouched reports whether no message of a room can be missing from a reply
// in the stretch (lo, before) of stream sequences, where the stream is known
// to hold none of the room's messages (see above). cov is the archive's
// coverage (nil: no archive answered). A failure to ask the stream is not
// vouching.
func (e *Edge) vouched(ctx context.Context, cov *pjs.ArchiveCoverage, lo, before uint64) bool {
	from := lo // every sequence in (lo, from] is archived
	if cov != nil && cov.After <= lo && cov.Through > from {
		from = cov.Through
	}
	if from+1 >= before {
		return true
	}
	st, err := e.backend.StreamState(ctx)
	if err != nil {
		e.log.Warn("stream info failed; not vouching for a reply", "err", err)
		return false
	}
	before = min(before, st.LastSeq+1) // later sequences hold nothing yet
	switch {
	case from+1 >= before:
		return true
	case st.FirstSeq > from+1: // gone from the stream, and not archived
		return false
	case st.NumDeleted == 0: // the stream holds all of FirstSeq..LastSeq
		return true
	case before-1-from > streamCheckMax:
		return false
	}
	ok, err := e.backend.Holds(ctx, from+1, before-1)
	if err != nil {
		e.log.Warn("stream read failed; not vouching for a reply", "err", err)
		return false
	}
	return ok
}

// historyFromArchive completes a read of a room's newest messages before a
// seq (history, sub with last) that the stream answered with fewer than
// limit (ds, oldest first) with older messages from the archive. The
// stream's part then reaches the room's oldest stored message, so what the
// archive adds lies before it. missing is empty when nothing can be missing
// from the reply, else the reason to give: some sequence below its stream
// part left the stream and is not in the archive, and could have been one
// of the room's messages.
func (c *Conn) historyFromArchive(ctx context.Context, room string, before uint64, limit int, ds []Delivery) (out []Delivery, missing string) {
	if len(ds) >= limit {
		return ds, "" // the stream alone: a room's stored messages have no holes
	}
	top := before
	if len(ds) > 0 {
		top = ds[0].Seq
	}
	if top == 0 { // no bound, and the stream holds none of the room's messages
		st, err := c.e.backend.StreamState(ctx)
		if err != nil {
			c.e.log.Warn("stream info failed; not vouching for a reply", "err", err)
			return ds, "the stream could not be asked what it no longer holds: messages of the room may be missing"
		}
		top = st.LastSeq + 1
	}
	want := limit - len(ds)
	var older []Delivery
	var cov *pjs.ArchiveCoverage
	var more bool
	if o, resp, err := c.e.archiveQuery(ctx, pjs.ArchiveHistoryRequest{Room: room, Before: top, Limit: want}); err != nil {
		c.e.archiveFailed("history", room, err)
	} else {
		older, cov, more = o, resp.Covered, resp.More
		if len(older) > want {
			older = older[len(older)-want:]
		}
	}
	// A full page (or one the archive says has older ones) speaks for the
	// stretch from its oldest message on; a short one claims the room has
	// nothing older, from the stream's beginning.
	lo := uint64(0)
	if len(older) > 0 && (len(older) == want || more) {
		lo = older[0].Seq
	}
	out = append(older, ds...)
	if c.e.vouched(ctx, cov, lo, top) {
		return out, ""
	}
	return out, fmt.Sprintf("messages before seq %d left the stream and the archive does not hold them all: some of the room's may be missing", top)
}

// recoverFromArchive completes a resume (sub with since) whose first
// messages the stream no longer holds: replay is what the stream still has
// after since, oldest first. ok is true only when every message of the room
// after since is accounted for: each sequence between since and the stream's
// part is archived or still stored (vouched); then ds is every missed message
// (all) or, when more than max were missed, the newest max of them.
func (c *Conn) recoverFromArchive(ctx context.Context, room string, since uint64, upTo uint64, replay []Delivery, max int) (ds []Delivery, all, ok bool) {
	if len(replay) >= max { // the stream alone holds max of the missed ones
		return replay[len(replay)-max:], false, true
	}
	before := upTo + 1
	if len(replay) > 0 {
		before = replay[0].Seq
	}
	want := max - len(replay)
	var older []Delivery
	var cov *pjs.ArchiveCoverage
	after := since
	o, resp, err := c.e.archiveQuery(ctx, pjs.ArchiveHistoryRequest{Room: room, Before: before, After: &after, Limit: want})
	switch {
	case err != nil:
		c.e.archiveFailed("sub", room, err)
	case len(o) > want:
		c.e.archiveFailed("sub", room, fmt.Errorf("%d messages for a limit of %d", len(o), want))
	case resp.More:
		// More than max were missed: the newest of the archive's
		// part instead, if the archive vouches for them.
		newest, resp, err := c.e.archiveQuery(ctx, pjs.ArchiveHistoryRequest{Room: room, Before: before, Limit: want})
		if err != nil {
			c.e.archiveFailed("sub", room, err)
			return nil, false, false
		}
		if len(newest) > want {
			newest = newest[len(newest)-want:]
		}
		if len(newest) == 0 || !c.e.vouched(ctx, resp.Covered, newest[0].Seq, before) {
			return nil, false, false
		}
		return append(newest, replay...), false, true
	default:
		older, cov = o, resp.Covered
	}
	if !c.e.vouched(ctx, cov, since, before) {
		return nil, false, false
	}
	return append(older, replay...), true, true
}
