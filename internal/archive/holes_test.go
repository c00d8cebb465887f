package archive

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// Issue 18: a resume (sub with since) must never answer recovered:true and
// then deliver less than everything after since; history and last must not
// skip messages silently either. These tests cut a room's messages out of
// the stream in every way the stream allows (per-subject limit, subject
// purge, max-bytes discard old) while the archiver is stopped, or while it
// holds them in a batch it has not committed, and read the room through a
// real edge and a real archiver on SQLite.

// holeMesh is an edge (no room cache: resumes read the stream and the
// archive, not the edge's memory) and an archiver on a SQLite file.
type holeMesh struct {
	t     *testing.T
	srv   *natstest.Server
	m     *mesh
	edge  *edge.Edge
	store Store
	path  string
	arch  *running
}

func newHoleMesh(t *testing.T, mutate func(*edge.Config)) *holeMesh {
	t.Helper()
	h := &holeMesh{t: t, srv: natstest.StartJetStream(t), path: filepath.Join(t.TempDir(), "archive.db")}
	h.edge = edgetest.Start(t, h.srv.URL(), func(c *edge.Config) {
		c.RoomCache = 0
		if mutate != nil {
			mutate(c)
		}
	})
	s, err := OpenSQLite(t.Context(), h.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	h.store = s
	h.m = &mesh{srv: h.srv, js: natstest.JetStream(t, h.srv.URL())}
	h.startArchiver()
	return h
}

func (h *holeMesh) startArchiver() {
	h.t.Helper()
	h.arch = startArchiver(h.t, h.srv.URL(), h.store, nil, nil)
}

func (h *holeMesh) stopArchiver() {
	h.t.Helper()
	if err := h.arch.stop(h.t); err != nil {
		h.t.Fatal(err)
	}
	// The stopped archiver's last pull request may still be waiting on the
	// server: a message published now would be delivered to it (to nobody)
	// and reach the next archiver only after AckWait, by which time a cut
	// may have removed it. Its connection is closed, so the server drops
	// the request; wait for that.
	h.consumerUntil(10*time.Second, func(info *jetstream.ConsumerInfo) error {
		if info.NumWaiting != 0 {
			return fmt.Errorf("the stopped archiver's pull requests still wait: %d", info.NumWaiting)
		}
		return nil
	})
}

// consumerUntil waits until check passes on the archive consumer's info.
func (h *holeMesh) consumerUntil(within time.Duration, check func(*jetstream.ConsumerInfo) error) {
	h.t.Helper()
	ctx := h.t.Context()
	natstest.Eventually(h.t, within, func() error {
		c, err := h.m.js.Consumer(ctx, pjs.ChatStream, pjs.ArchiveConsumer)
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		return check(info)
	})
}

// caughtUp waits until the archive consumer has nothing left to deliver and
// nothing unacked: archivers ack only after commit, so everything the
// stream still had for it is committed.
func (h *holeMesh) caughtUp() { h.caughtUpThrough(0) }

// caughtUpThrough is caughtUp that also waits for the consumer to have
// delivered stream sequence through: a consumer the archiver has only just
// created can report nothing pending for a moment on a busy machine, which
// let before() return with its messages never archived (and the next cut
// then removed them unseen).
func (h *holeMesh) caughtUpThrough(through uint64) {
	h.t.Helper()
	h.consumerUntil(30*time.Second, func(info *jetstream.ConsumerInfo) error {
		if info.NumPending != 0 || info.NumAckPending != 0 || info.Delivered.Stream < through {
			return fmt.Errorf("consumer pending %d, ack pending %d, delivered through %d (want %d)",
				info.NumPending, info.NumAckPending, info.Delivered.Stream, through)
		}
		return nil
	})
}

// stored is the subsequence of seqs the stream still holds.
func (h *holeMesh) stored(seqs []uint64) []uint64 {
	h.t.Helper()
	s, err := h.m.js.Stream(h.t.Context(), pjs.ChatStream)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []uint64
	for _, seq := range seqs {
		_, err := s.GetMsg(h.t.Context(), seq)
		switch {
		case err == nil:
			out = append(out, seq)
		case !errors.Is(err, jetstream.ErrMsgNotFound):
			h.t.Fatal(err)
		}
	}
	return out
}

// sub subscribes a new client and returns the reply and the seqs of the
// messages replayed before any live one: a ping sent after the sub is
// answered after the replay (a connection's requests are handled in order,
// and the client hands out messages before the replies that follow them).
func (h *holeMesh) sub(room string, opt client.SubOption) (client.SubResult, []uint64) {
	h.t.Helper()
	c := edgetest.Dial(h.t, h.edge, "reader")
	defer c.Close()
	ctx := h.t.Context()
	r, err := c.Subscribe(ctx, room, opt)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := c.Ping(ctx); err != nil {
		h.t.Fatal(err)
	}
	var got []uint64
	for {
		select {
		case m := <-c.Messages():
			if m.Room != room {
				h.t.Fatalf("replay of %s has %+v", room, m)
			}
			got = append(got, m.Seq)
			continue
		default:
		}
		break
	}
	if d := c.Duplicates(); d != 0 {
		h.t.Errorf("sub %s: %d duplicates", room, d)
	}
	return r, got
}

func (h *holeMesh) history(room string, before uint64, limit int) (string, []uint64) {
	h.t.Helper()
	c := edgetest.Dial(h.t, h.edge, "historian")
	defer c.Close()
	r, err := c.Request(h.t.Context(), protocol.Request{Op: protocol.OpHistory, Room: room, Before: before, Limit: limit})
	if err != nil {
		h.t.Fatal(err)
	}
	got := make([]uint64, len(r.Msgs))
	for i, raw := range r.Msgs {
		var m protocol.Msg
		if err := json.Unmarshal(raw, &m); err != nil || m.Room != room {
			h.t.Fatalf("history message %s: %v", raw, err)
		}
		got[i] = m.Seq
	}
	return r.Reason, got
}

func recovered(r client.SubResult) bool { return r.Recovered != nil && *r.Recovered }

// checkResume is the contract: recovered:true and every missed message in
// order, or recovered:false with a reason. want says which of the two this
// situation allows (all: the archive holds every missed message), and left
// is what a recovered:false answer must deliver.
func (h *holeMesh) checkResume(what string, room string, since uint64, missed []uint64, all bool, left []uint64) {
	h.t.Helper()
	r, got := h.sub(room, client.Since(since))
	switch {
	case recovered(r) && !slices.Equal(got, missed):
		h.t.Errorf("%s: resume since %d said recovered:true and delivered %d of %d missed messages: %v, want %v",
			what, since, len(got), len(missed), got, missed)
	case all && !recovered(r):
		h.t.Errorf("%s: resume since %d: recovered:false (%q) though the archive holds every missed message", what, since, r.Reason)
	case !all && recovered(r):
		h.t.Errorf("%s: resume since %d: recovered:true though neither the stream nor the archive holds every missed message", what, since)
	case !recovered(r) && (r.Reason == "" || !slices.Equal(got, left)):
		h.t.Errorf("%s: resume since %d: recovered:false with reason %q and %v, want a reason and %v", what, since, r.Reason, got, left)
	}
}

// checkReads checks history and last for a room whose messages are have
// (oldest first: what the stream and the archive hold between them); all
// says whether they are every message the room ever had.
func (h *holeMesh) checkReads(what, room string, have []uint64, all bool) {
	h.t.Helper()
	const limit = 50
	reason, got := h.history(room, 0, limit)
	want := have[max(len(have)-limit, 0):]
	if !slices.Equal(got, want) {
		h.t.Errorf("%s: history got %v, want %v", what, got, want)
	}
	if all && reason != "" {
		h.t.Errorf("%s: complete history says %q", what, reason)
	}
	if !all && len(have) < limit && reason == "" {
		h.t.Errorf("%s: history of %d messages, some of the room's messages lost, and no reason", what, len(got))
	}
	const last = 20
	r, got := h.sub(room, client.Last(last))
	want = have[max(len(have)-last, 0):]
	if !slices.Equal(got, want) {
		h.t.Errorf("%s: last %d got %v, want %v", what, last, got, want)
	}
	switch {
	case all && !recovered(r):
		h.t.Errorf("%s: last %d: recovered:false (%q) though every message is there", what, last, r.Reason)
	case !all && len(have) < last && (recovered(r) || r.Reason == ""):
		h.t.Errorf("%s: last %d: %d came back, older ones lost, yet recovered %v reason %q", what, last, len(got), recovered(r), r.Reason)
	}
}

// A cut removes some of a room's messages from the stream: it publishes
// missed (the messages a resuming client missed) and returns them. sync is
// called between steps when the archiver is to keep up.
type cut struct {
	name   string
	config func(*edge.Config)
	apply  func(h *holeMesh, sync func()) (missed []uint64)
}

var cuts = []cut{
	{
		name:   "per-subject limit",
		config: func(c *edge.Config) { c.Stream.MaxMsgsPerSubject = 5 },
		apply: func(h *holeMesh, sync func()) []uint64 {
			var missed []uint64
			for len(missed) < 29 { // 29, five at a time: the stream keeps the last 5
				missed = append(missed, h.m.publish(h.t, min(5, 29-len(missed)), "chat.room.hot")...)
				sync()
			}
			return missed
		},
	},
	{
		name: "subject purge",
		apply: func(h *holeMesh, sync func()) []uint64 {
			missed := h.m.publish(h.t, 10, "chat.room.hot")
			sync()
			s, err := h.m.js.Stream(h.t.Context(), pjs.ChatStream)
			if err != nil {
				h.t.Fatal(err)
			}
			if err := s.Purge(h.t.Context(), jetstream.WithPurgeSubject("chat.room.hot"), jetstream.WithPurgeKeep(3)); err != nil {
				h.t.Fatal(err)
			}
			return missed
		},
	},
	{
		name:   "max-bytes discard old",
		config: func(c *edge.Config) { c.Stream.MaxBytes = 48 << 10 },
		apply: func(h *holeMesh, sync func()) []uint64 {
			pad := strings.Repeat("x", 1000)
			var missed []uint64
			for i := range 80 { // about 80 KiB through a 48 KiB stream
				ack, err := h.m.js.Publish(h.t.Context(), "chat.room.hot", fmt.Appendf(nil, `{"from":"svc","data":{"i":%d,"pad":%q}}`, i, pad))
				if err != nil {
					h.t.Fatal(err)
				}
				missed = append(missed, ack.Sequence)
				if i%10 == 9 {
					sync()
				}
			}
			return missed
		},
	},
}

// before publishes the room's history up to the client's position (archived)
// and a message of another room that keeps the stream's first sequence low.
func (h *holeMesh) before() []uint64 {
	h.t.Helper()
	h.m.publish(h.t, 1, "chat.room.cold")
	seen := h.m.publish(h.t, 3, "chat.room.hot")
	h.caughtUpThrough(seen[len(seen)-1])
	return seen
}

// The archiver is down while the room's messages leave the stream: nothing
// holds them any more. The resume must say recovered:false, history must
// say that messages may be missing, and last too when fewer came back.
// Before the fix the archive consumer's ack floor, which skips messages that
// left the stream unseen, vouched for the hole: recovered:true.
func TestHoleWhileArchiverDown(t *testing.T) {
	for _, c := range cuts {
		t.Run(c.name, func(t *testing.T) {
			h := newHoleMesh(t, c.config)
			seen := h.before()
			h.stopArchiver()
			missed := c.apply(h, func() {})
			left := h.stored(missed)
			if len(left) == len(missed) {
				t.Fatalf("the cut removed nothing")
			}
			h.startArchiver()
			h.caughtUp()
			since := seen[len(seen)-1]
			h.checkResume("archiver down", "hot", since, missed, false, left)
			h.checkReads("archiver down", "hot", append(slices.Clone(seen), left...), false)
		})
	}
}

// The archiver keeps up while the room's messages leave the stream: the
// archive holds them all, and resume, history and last get every one.
func TestHoleFilledByArchive(t *testing.T) {
	for _, c := range cuts {
		t.Run(c.name, func(t *testing.T) {
			h := newHoleMesh(t, c.config)
			seen := h.before()
			missed := c.apply(h, h.caughtUp)
			if left := h.stored(missed); len(left) == len(missed) {
				t.Fatalf("the cut removed nothing")
			}
			h.caughtUp()
			since := seen[len(seen)-1]
			h.checkResume("archived", "hot", since, missed, true, nil)
			h.checkReads("archived", "hot", append(slices.Clone(seen), missed...), true)
		})
	}
}

// lockSQLite takes the database's write lock from another connection, as a
// long transaction of another process would: the archiver's next commit
// waits (and retries) until release.
func lockSQLite(t *testing.T, path string) (release func()) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_txlock=immediate&_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(t.Context(), nil) // BEGIN IMMEDIATE: the write lock, now
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	done := false
	release = func() {
		if !done {
			done = true
			_ = tx.Rollback()
			db.Close()
		}
	}
	t.Cleanup(release)
	return release
}

// The race, made deterministic: the archiver has fetched a batch of
// the room's messages and cannot commit it yet (its store is locked) when
// the per-subject limit cuts them from the stream. JetStream treats a
// pending message that left the stream as acked and moves the consumer's
// ack floor past it, so before the fix the archive claimed messages it had
// not committed and a resume got recovered:true with only the stream's part.
// Once the archiver commits, the same resume is recovered in full.
func TestHoleInUncommittedBatch(t *testing.T) {
	h := newHoleMesh(t, func(c *edge.Config) { c.Stream.MaxMsgsPerSubject = 5 })
	seen := h.before()
	h.stopArchiver()
	batch := h.m.publish(h.t, 5, "chat.room.hot") // the stream keeps these 5
	release := lockSQLite(t, h.path)
	h.startArchiver()
	consumerIs := func(what string, ok func(*jetstream.ConsumerInfo) bool) {
		t.Helper()
		h.consumerUntil(10*time.Second, func(info *jetstream.ConsumerInfo) error {
			if !ok(info) {
				return fmt.Errorf("consumer not %s yet: pending %d, ack pending %d, ack floor %d (consumer %d), delivered %d (consumer %d), redelivered %d",
					what, info.NumPending, info.NumAckPending, info.AckFloor.Stream, info.AckFloor.Consumer,
					info.Delivered.Stream, info.Delivered.Consumer, info.NumRedelivered)
			}
			return nil
		})
	}
	// At least the batch (before() and stopArchiver leave nothing of the
	// first archiver's pending, so it should be exactly the batch).
	consumerIs("holding the batch", func(i *jetstream.ConsumerInfo) bool { return i.NumPending == 0 && i.NumAckPending >= 5 })
	after := h.m.publish(h.t, 5, "chat.room.hot") // cuts the uncommitted batch
	consumerIs("past the batch", func(i *jetstream.ConsumerInfo) bool {
		return i.NumAckPending == 0 && i.AckFloor.Stream >= batch[len(batch)-1]
	})
	missed := append(slices.Clone(batch), after...)
	since := seen[len(seen)-1]
	h.checkResume("uncommitted", "hot", since, missed, false, after)
	reason, _ := h.history("hot", 0, 50)
	if reason == "" {
		t.Errorf("uncommitted: history across the hole gives no reason")
	}

	release()
	h.caughtUp()
	h.checkResume("committed", "hot", since, missed, true, nil)
	h.checkReads("committed", "hot", append(slices.Clone(seen), missed...), true)
}

// While the archiver lags (its store is locked: it commits nothing), rooms
// whose messages never left the stream read as before: history says nothing
// is missing, last and resumes are recovered. What the archive has not
// committed yet below them is still in the stream, so it is another room's.
// Another room's hole (the per-subject limit) lies above them.
func TestNoFalseAlarmWhileArchiverLags(t *testing.T) {
	h := newHoleMesh(t, func(c *edge.Config) { c.Stream.MaxMsgsPerSubject = 5 })
	h.before()
	release := lockSQLite(t, h.path)
	defer release()
	h.m.publish(h.t, 1, "chat.room.cold") // in the stream only, below fresh
	fresh := h.m.publish(h.t, 3, "chat.room.fresh")
	h.m.publish(h.t, 20, "chat.room.hot") // the hole: 15 of them leave
	if reason, got := h.history("fresh", 0, 50); reason != "" || !slices.Equal(got, fresh) {
		t.Errorf("fresh history: %v reason %q, want %v and no reason", got, reason, fresh)
	}
	if r, got := h.sub("fresh", client.Last(20)); !recovered(r) || !slices.Equal(got, fresh) {
		t.Errorf("fresh last 20: %+v %v, want recovered and %v", r, got, fresh)
	}
	h.checkResume("fresh", "fresh", fresh[0], fresh[1:], true, nil)
}

// With no archiver answering at all, the same reads cannot be vouched for
// once another room's messages have left the stream below them: any of
// those could have been this room's.
func TestNoArchiverCannotVouch(t *testing.T) {
	h := newHoleMesh(t, func(c *edge.Config) { c.Stream.MaxMsgsPerSubject = 5 })
	h.before()
	h.stopArchiver()
	fresh := h.m.publish(h.t, 3, "chat.room.fresh")
	if reason, got := h.history("fresh", 0, 50); !slices.Equal(got, fresh) {
		t.Errorf("fresh history: %v, want %v", got, fresh)
	} else if reason != "" {
		t.Errorf("fresh history before any message left the stream: reason %q", reason)
	}
	h.m.publish(h.t, 20, "chat.room.hot") // cuts the archived hot messages below fresh
	if reason, got := h.history("fresh", 0, 50); reason == "" || !slices.Equal(got, fresh) {
		t.Errorf("fresh history: %v reason %q, want %v and a reason", got, reason, fresh)
	}
	if r, got := h.sub("fresh", client.Last(20)); recovered(r) || r.Reason == "" || !slices.Equal(got, fresh) {
		t.Errorf("fresh last 20: %+v %v, want recovered:false with a reason and %v", r, got, fresh)
	}
	// A resume within what the stream holds needs no archive.
	h.checkResume("fresh", "fresh", fresh[0], fresh[1:], true, nil)
}
