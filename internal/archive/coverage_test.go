package archive

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// records are room messages at the given sequences.
func records(seqs ...uint64) []Record {
	out := make([]Record, len(seqs))
	for i, s := range seqs {
		out[i] = Record{Seq: s, Subject: "chat.room.r", Kind: KindRoom, Name: "r", MsgID: fmt.Sprint(s),
			Time: time.UnixMilli(1764050400000), Data: []byte(`1`)}
	}
	return out
}

func seqRange(lo, hi uint64, skip ...uint64) []uint64 {
	var out []uint64
	for s := lo; s <= hi; s++ {
		skipped := false
		for _, k := range skip {
			skipped = skipped || k == s
		}
		if !skipped {
			out = append(out, s)
		}
	}
	return out
}

// coverage asks the store how far it holds every sequence after after, up
// to upTo, the way the history service does.
func coverage(t *testing.T, s Store, after, upTo uint64) uint64 {
	t.Helper()
	_, cov, err := s.History(t.Context(), HistoryQuery{Kind: KindRoom, Name: "r", Limit: 1,
		Cover: func([]Record) (uint64, uint64) { return after, upTo }})
	if err != nil {
		t.Fatal(err)
	}
	if cov == nil || cov.After != after {
		t.Fatalf("coverage (%d, %d]: %+v", after, upTo, cov)
	}
	return cov.Through
}

// The archive vouches for a stretch of sequences exactly as far as it holds
// every one of them, messages and poison alike, across block boundaries,
// however the stretch is aligned, and whatever wrote the rows.
func TestCoverage(t *testing.T) {
	forEachStore(t, func(t *testing.T, k storeKind) {
		s, admin := k.open(t)
		ctx := t.Context()
		write := func(b Batch) {
			t.Helper()
			if _, err := s.Write(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		// 1..3*seqBlock+100 held except 5000 and 9000; 8200 is poison;
		// nothing above.
		const top = 3*seqBlock + 100
		all := seqRange(1, top, 5000, 8200, 9000)
		for len(all) > 0 {
			n := min(1000, len(all))
			write(Batch{Records: records(all[:n]...)})
			all = all[n:]
		}
		write(Batch{Poison: []Poison{{Seq: 8200, Subject: "chat.x", Reason: "test", Payload: []byte("x"), Time: time.Now()}}})
		// A redelivery writes nothing twice, and a seq already poison is
		// not also stored as a message.
		write(Batch{Records: records(1, 2, 3, 8200)})

		for _, tc := range []struct{ after, upTo, want uint64 }{
			{0, 0, 0},
			{0, 10, 10},
			{0, noBound, 4999},
			{0, 4999, 4999},
			{4998, 6000, 4999},
			{4999, 6000, 4999}, // 5000 itself is missing
			{5000, 8999, 8999}, // across a block boundary and the poison
			{5000, noBound, 8999},
			{9000, noBound, top},
			{9000, top + 50, top},   // nothing above top yet
			{0, seqBlock, seqBlock}, // one whole block
			{9000, 3 * seqBlock, 3 * seqBlock},
			{8999, 3*seqBlock + 1, 8999},
			{top, noBound, top},
			{top + 10, noBound, top + 10}, // an empty stretch
			{100, 50, 100},
		} {
			if got := coverage(t, s, tc.after, tc.upTo); got != tc.want {
				t.Errorf("(%d, %d]: covered through %d, want %d", tc.after, tc.upTo, got, tc.want)
			}
		}
		if n, p, err := s.Count(ctx); err != nil || n != top-3 || p != 1 {
			t.Fatalf("count %d messages %d poison, err %v", n, p, err)
		}

		// Filling the holes extends the coverage; rows removed behind the
		// archiver's back shorten it (the counts follow deletes).
		write(Batch{Records: records(5000, 9000)})
		if got := coverage(t, s, 0, noBound); got != top {
			t.Errorf("after filling the holes: through %d, want %d", got, top)
		}
		if got := coverage(t, s, seqBlock, 3*seqBlock); got != 3*seqBlock { // whole blocks only
			t.Errorf("whole blocks: through %d, want %d", got, 3*seqBlock)
		}
		admin.exec(t, `DELETE FROM parley_messages WHERE seq = 6000`)
		if got := coverage(t, s, 0, noBound); got != 5999 {
			t.Errorf("after a delete: through %d, want 5999", got)
		}
		if got := coverage(t, s, 6000, noBound); got != top {
			t.Errorf("after a delete, from it: through %d, want %d", got, top)
		}
	})
}

// An archive written before the block counts existed (schema version 1) is
// counted when it is migrated, and stays counted as it grows.
func TestCoverageAfterUpgrade(t *testing.T) {
	seqs := seqRange(1, seqBlock+10, 7)
	ctx := context.Background()
	check := func(t *testing.T, s Store) {
		t.Helper()
		if got := coverage(t, s, 0, noBound); got != 6 {
			t.Errorf("through %d, want 6", got)
		}
		if got := coverage(t, s, 7, noBound); got != seqBlock+10 {
			t.Errorf("from 7: through %d, want %d", got, seqBlock+10)
		}
		if _, err := s.Write(ctx, Batch{Records: records(7, seqBlock+11)}); err != nil {
			t.Fatal(err)
		}
		if got := coverage(t, s, 0, noBound); got != seqBlock+11 {
			t.Errorf("after filling: through %d, want %d", got, seqBlock+11)
		}
	}
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "archive.db")
		db, err := sql.Open("sqlite", "file:"+path+"?_journal_mode=WAL")
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{
			`CREATE TABLE parley_schema (version INTEGER NOT NULL)`,
			sqliteMigrations[0],
			`INSERT INTO parley_schema (version) VALUES (1)`,
		} {
			if _, err := db.ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range seqs {
			if _, err := tx.ExecContext(ctx, `INSERT INTO parley_messages (seq, subject, kind, name, msg_id, sender, ts, data)
				VALUES (?, 'chat.room.r', 'room', 'r', '', '', 0, '1')`, int64(s)); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		db.Close()
		s, err := OpenSQLite(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		check(t, s)
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := postgresDSN(t)
		fresh, _ := openTestPostgres(t) // a schema of its own, at the current version
		schema := fresh.(*Postgres).pool.Config().ConnConfig.RuntimeParams["search_path"]
		fresh.Close()
		conn, err := pgx.Connect(ctx, withSearchPath(t, dsn, schema))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		// Back to version 1, with rows.
		for _, q := range []string{
			`DROP TABLE parley_messages, parley_poison, parley_seq_blocks, parley_schema CASCADE`,
			`DROP FUNCTION parley_seqs_held, parley_seqs_gone, parley_seqs_recount`,
			`CREATE TABLE parley_schema (version int NOT NULL)`,
			postgresMigrations[0],
			`INSERT INTO parley_schema (version) VALUES (1)`,
		} {
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		for _, s := range seqs {
			if _, err := conn.Exec(ctx, `INSERT INTO parley_messages (seq, subject, kind, name, msg_id, sender, ts, data)
				VALUES ($1, 'chat.room.r', 'room', 'r', '', '', now(), '1')`, int64(s)); err != nil {
				t.Fatal(err)
			}
		}
		s, err := OpenPostgres(ctx, withSearchPath(t, dsn, schema))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		check(t, s)
	})
}
