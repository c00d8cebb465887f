package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/parley-mesh/parley/internal/protocol"
	pjs "github.com/parley-mesh/parley/jetstream"
)

// The archive fallback: when the stream no longer holds what a history
// request or a resuming sub asks for, the edge asks the archivers' history
// service (Config.ArchiveSubject; contract in docs/archiver.md). Whatever
// goes wrong there (no archiver deployed: no responders; a timeout; an
// error) leaves the edge answering from the stream alone, exactly as without
// an archive. Archive messages are re-encoded with protocol.AppendMsg, so a
// client cannot tell them from stream ones.

// archiveQuery asks the archive for a room's messages and returns them as
// deliveries, oldest first, each checked to belong to the room and to lie
// within (after, before).
func (e *Edge) archiveQuery(ctx context.Context, req pjs.ArchiveHistoryRequest) ([]Delivery, *pjs.ArchiveHistoryResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.RequestTimeout)
	defer cancel()
	m, err := e.nc.RequestWithContext(ctx, e.cfg.ArchiveSubject, body)
	if err != nil {
		return nil, nil, err
	}
	var resp pjs.ArchiveHistoryResponse
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return nil, nil, fmt.Errorf("archive response: %w", err)
	}
	if resp.Error != nil {
		return nil, nil, fmt.Errorf("archive: %s: %s", resp.Error.Code, resp.Error.Message)
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
	return out, &resp, nil
}

// archiveFailed logs why the archive did not help; no responders is the
// normal state of a mesh without archivers and is not worth a warning.
func (e *Edge) archiveFailed(what, room string, err error) {
	if errors.Is(err, nats.ErrNoResponders) {
		e.log.Debug("no archive answering", "op", what, "room", room)
		return
	}
	e.log.Warn("archive fallback failed; answering from the stream alone", "op", what, "room", room, "err", err)
}

// historyFromArchive completes a history answer read from the stream (ds,
// oldest first, fewer than limit) with older messages from the archive.
// Retention removes a room's oldest messages first, so what the archive adds
// lies entirely before what the stream still has.
func (c *Conn) historyFromArchive(ctx context.Context, room string, before uint64, limit int, ds []Delivery) []Delivery {
	if c.e.cfg.ArchiveSubject == "" || len(ds) >= limit {
		return ds
	}
	if len(ds) > 0 {
		before = ds[0].Seq
	}
	older, _, err := c.e.archiveQuery(ctx, pjs.ArchiveHistoryRequest{Room: room, Before: before, Limit: limit - len(ds)})
	if err != nil {
		c.e.archiveFailed("history", room, err)
		return ds
	}
	if len(older) > limit-len(ds) {
		older = older[len(older)-(limit-len(ds)):]
	}
	return append(older, ds...)
}

// recoverFromArchive completes a resume (sub with since) whose first
// messages the stream no longer holds: replay is what the stream still has
// after since, oldest first. ok is true only when the archive vouches for
// the whole stretch between since and the stream's part (its consumer has
// archived through it); then ds is every missed message (all) or, when more
// than max were missed, the newest max of them.
func (c *Conn) recoverFromArchive(ctx context.Context, room string, since uint64, upTo uint64, replay []Delivery, max int) (ds []Delivery, all, ok bool) {
	if len(replay) >= max { // the stream alone holds max of the missed ones
		return replay[len(replay)-max:], false, true
	}
	if c.e.cfg.ArchiveSubject == "" {
		return nil, false, false
	}
	before := upTo + 1
	if len(replay) > 0 {
		before = replay[0].Seq
	}
	after := since
	want := max - len(replay)
	older, resp, err := c.e.archiveQuery(ctx, pjs.ArchiveHistoryRequest{Room: room, Before: before, After: &after, Limit: want})
	if err != nil {
		c.e.archiveFailed("sub", room, err)
		return nil, false, false
	}
	if resp.ArchivedThrough == nil || *resp.ArchivedThrough+1 < before || len(older) > want {
		return nil, false, false
	}
	if !resp.More {
		return append(older, replay...), true, true
	}
	// More than max were missed: the newest of the archive's part instead.
	older, _, err = c.e.archiveQuery(ctx, pjs.ArchiveHistoryRequest{Room: room, Before: before, Limit: want})
	if err != nil {
		c.e.archiveFailed("sub", room, err)
		return nil, false, false
	}
	if len(older) > want {
		older = older[len(older)-want:]
	}
	return append(older, replay...), false, true
}
