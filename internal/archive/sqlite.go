package archive

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"modernc.org/sqlite" // pure-Go SQLite: no cgo needed
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLite is the default store: one file, a pure-Go driver. Several archiver
// processes may share the file on one host (WAL mode, write transactions
// take the lock up front and wait for it).
type SQLite struct {
	db *sql.DB
}

// sqliteMigrations are applied in order, each once, recorded in
// parley_schema. Never edit one that shipped: append.
var sqliteMigrations = []string{
	`CREATE TABLE parley_messages (
		seq     INTEGER PRIMARY KEY,
		subject TEXT    NOT NULL,
		kind    TEXT    NOT NULL,
		name    TEXT    NOT NULL,
		msg_id  TEXT    NOT NULL,
		sender  TEXT    NOT NULL,
		ts      INTEGER NOT NULL,
		data    TEXT    NOT NULL,
		headers TEXT
	);
	CREATE INDEX parley_messages_by_name_seq ON parley_messages (kind, name, seq);
	CREATE INDEX parley_messages_by_name_ts ON parley_messages (kind, name, ts);
	CREATE TABLE parley_poison (
		seq         INTEGER PRIMARY KEY,
		subject     TEXT    NOT NULL,
		reason      TEXT    NOT NULL,
		payload     BLOB    NOT NULL,
		headers     TEXT,
		ts          INTEGER NOT NULL,
		recorded_at INTEGER NOT NULL
	);`,
	// 2: per block of 4096 sequences (seqBlock), how many are archived, so
	// that the archive can prove it holds a long stretch of the stream
	// without reading it row by row (coverage.go). Triggers keep the counts
	// in the writing transaction, whoever writes; the backfill counts what
	// is there already (a seq in both tables, which writers now prevent,
	// once).
	`CREATE TABLE parley_seq_blocks (
		block INTEGER PRIMARY KEY,
		held  INTEGER NOT NULL
	);
	CREATE TRIGGER parley_messages_held AFTER INSERT ON parley_messages BEGIN
		INSERT INTO parley_seq_blocks (block, held) VALUES ((NEW.seq - 1) / 4096, 1)
			ON CONFLICT (block) DO UPDATE SET held = held + 1;
	END;
	CREATE TRIGGER parley_poison_held AFTER INSERT ON parley_poison BEGIN
		INSERT INTO parley_seq_blocks (block, held) VALUES ((NEW.seq - 1) / 4096, 1)
			ON CONFLICT (block) DO UPDATE SET held = held + 1;
	END;
	CREATE TRIGGER parley_messages_gone AFTER DELETE ON parley_messages BEGIN
		UPDATE parley_seq_blocks SET held = held - 1 WHERE block = (OLD.seq - 1) / 4096;
	END;
	CREATE TRIGGER parley_poison_gone AFTER DELETE ON parley_poison BEGIN
		UPDATE parley_seq_blocks SET held = held - 1 WHERE block = (OLD.seq - 1) / 4096;
	END;
	INSERT INTO parley_seq_blocks (block, held)
		SELECT (seq - 1) / 4096, COUNT(*)
		FROM (SELECT seq FROM parley_messages UNION SELECT seq FROM parley_poison)
		GROUP BY 1;`,
}

// OpenSQLite opens or creates the database at path and migrates it.
func OpenSQLite(ctx context.Context, path string) (*SQLite, error) {
	if strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("%w: sqlite path %q must not contain '?' or '#'", ErrBadConfig, path)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("sqlite directory: %w", err)
		}
	}
	// synchronous=FULL: the archiver acks after commit, so a commit must
	// survive a power loss, or the message would be gone from both places
	// once the stream's retention drops it.
	dsn := "file:" + path + "?_busy_timeout=10000&_journal_mode=WAL&_synchronous=FULL&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	s := &SQLite{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *SQLite) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil) // immediate: one migrator at a time
	if err != nil {
		return fmt.Errorf("sqlite migrate: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS parley_schema (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("sqlite migrate: %w", err)
	}
	var version int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM parley_schema`).Scan(&version); err != nil {
		return fmt.Errorf("sqlite migrate: %w", err)
	}
	if version > len(sqliteMigrations) {
		return fmt.Errorf("%w: sqlite schema version %d is newer than this archiver knows (%d)", ErrBadConfig, version, len(sqliteMigrations))
	}
	for v := version + 1; v <= len(sqliteMigrations); v++ {
		if _, err := tx.ExecContext(ctx, sqliteMigrations[v-1]); err != nil {
			return fmt.Errorf("sqlite migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO parley_schema (version) VALUES (?)`, v); err != nil {
			return fmt.Errorf("sqlite migration %d: %w", v, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite migrate: %w", err)
	}
	return nil
}

// Write implements Store.
func (s *SQLite) Write(ctx context.Context, b Batch) (int, error) {
	if b.Len() == 0 {
		return 0, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("sqlite begin: %w", err)
	}
	defer tx.Rollback()
	inserted := 0
	if len(b.Records) > 0 {
		// A seq recorded as poison (by an earlier delivery) is not also
		// stored as a message, nor the other way round: each archived
		// sequence is counted once (coverage.go).
		st, err := tx.PrepareContext(ctx, `INSERT INTO parley_messages
			(seq, subject, kind, name, msg_id, sender, ts, data, headers)
			SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULLIF(?9, '')
			WHERE NOT EXISTS (SELECT 1 FROM parley_poison WHERE seq = ?1)
			ON CONFLICT (seq) DO NOTHING`)
		if err != nil {
			return 0, fmt.Errorf("sqlite prepare: %w", err)
		}
		defer st.Close()
		for i := range b.Records {
			r := &b.Records[i]
			h, err := encodeHeaders(r.Headers)
			if err != nil {
				return 0, err
			}
			res, err := st.ExecContext(ctx, int64(r.Seq), r.Subject, string(r.Kind), r.Name, r.MsgID, r.From,
				r.Time.UnixMilli(), string(r.Data), h)
			if err != nil {
				return 0, sqliteError(fmt.Sprintf("sqlite insert seq %d", r.Seq), err)
			}
			if n, _ := res.RowsAffected(); n > 0 {
				inserted++
			}
		}
	}
	for i := range b.Poison {
		p := &b.Poison[i]
		h, err := encodeHeaders(p.Headers)
		if err != nil {
			return 0, err
		}
		payload := p.Payload
		if payload == nil {
			payload = []byte{}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO parley_poison
			(seq, subject, reason, payload, headers, ts, recorded_at)
			SELECT ?1, ?2, ?3, ?4, NULLIF(?5, ''), ?6, ?7
			WHERE NOT EXISTS (SELECT 1 FROM parley_messages WHERE seq = ?1)
			ON CONFLICT (seq) DO NOTHING`,
			int64(p.Seq), p.Subject, p.Reason, payload, h, p.Time.UnixMilli(), time.Now().UnixMilli()); err != nil {
			return 0, sqliteError(fmt.Sprintf("sqlite insert poison seq %d", p.Seq), err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("sqlite commit: %w", err)
	}
	return inserted, nil
}

// sqliteError marks a row SQLite will never take (over its limits, refused by
// a constraint or trigger) as ErrRejected.
func sqliteError(what string, err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_MISMATCH:
			return fmt.Errorf("%s: %w: %w", what, ErrRejected, err)
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// History implements Store. Rows and coverage are read in one read
// transaction: in WAL mode that is one snapshot, and it takes no lock that
// writers wait for.
func (s *SQLite) History(ctx context.Context, q HistoryQuery) ([]Record, *Coverage, error) {
	var where strings.Builder
	args := []any{string(q.Kind), q.Name}
	where.WriteString(`kind = ? AND name = ?`)
	if q.Before > 0 {
		where.WriteString(` AND seq < ?`)
		args = append(args, int64(q.Before))
	}
	if !q.BeforeTime.IsZero() {
		where.WriteString(` AND ts < ?`)
		args = append(args, q.BeforeTime.UnixMilli())
	}
	order := "DESC"
	if q.After != nil {
		where.WriteString(` AND seq > ?`)
		args = append(args, int64(*q.After))
		order = "ASC"
	}
	args = append(args, q.Limit)
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, nil, fmt.Errorf("sqlite history: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT seq, subject, kind, name, msg_id, sender, ts, data, COALESCE(headers, '')
		FROM parley_messages WHERE `+where.String()+` ORDER BY seq `+order+` LIMIT ?`, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("sqlite history: %w", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		var r Record
		var seq, ts int64
		var kind, data, headers string
		if err := rows.Scan(&seq, &r.Subject, &kind, &r.Name, &r.MsgID, &r.From, &ts, &data, &headers); err != nil {
			return nil, nil, fmt.Errorf("sqlite history: %w", err)
		}
		r.Seq, r.Kind, r.Time, r.Data = uint64(seq), Kind(kind), time.UnixMilli(ts), []byte(data)
		if r.Headers, err = decodeHeaders(headers); err != nil {
			return nil, nil, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("sqlite history: %w", err)
	}
	rows.Close()
	if q.After == nil {
		reverse(out)
	}
	cov, err := spanned(ctx, sqliteSnapshot{tx}, q, out)
	if err != nil {
		return nil, nil, fmt.Errorf("sqlite history: %w", err)
	}
	return out, cov, nil
}

// sqliteSnapshot reads coverage inside a read transaction.
type sqliteSnapshot struct{ tx *sql.Tx }

func (s sqliteSnapshot) seqsIn(ctx context.Context, lo, hi uint64) ([]uint64, error) {
	rows, err := s.tx.QueryContext(ctx, `SELECT seq FROM parley_messages WHERE seq BETWEEN ?1 AND ?2
		UNION SELECT seq FROM parley_poison WHERE seq BETWEEN ?1 AND ?2 ORDER BY 1`, int64(lo), int64(hi))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []uint64
	for rows.Next() {
		var seq int64
		if err := rows.Scan(&seq); err != nil {
			return nil, err
		}
		out = append(out, uint64(seq))
	}
	return out, rows.Err()
}

func (s sqliteSnapshot) blockSum(ctx context.Context, k1, k2 uint64) (rows, held uint64, err error) {
	var r, h int64
	err = s.tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(held), 0) FROM parley_seq_blocks
		WHERE block BETWEEN ? AND ?`, int64(k1), int64(k2)).Scan(&r, &h)
	return uint64(r), uint64(h), err
}

func (s sqliteSnapshot) firstNotFull(ctx context.Context, k1, k2 uint64) (uint64, error) {
	var k int64
	err := s.tx.QueryRowContext(ctx, `SELECT COALESCE(MIN(k), ?2 + 1) FROM (
			SELECT block AS k FROM parley_seq_blocks WHERE block BETWEEN ?1 AND ?2 AND held <> 4096
			UNION ALL
			SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM parley_seq_blocks WHERE block = ?1)
			UNION ALL
			SELECT b.block + 1 FROM parley_seq_blocks b WHERE b.block BETWEEN ?1 AND ?2 - 1
				AND NOT EXISTS (SELECT 1 FROM parley_seq_blocks n WHERE n.block = b.block + 1))`,
		int64(k1), int64(k2)).Scan(&k)
	return uint64(k), err
}

func (s sqliteSnapshot) highest(ctx context.Context) (uint64, error) {
	var h int64
	err := s.tx.QueryRowContext(ctx, `SELECT MAX(COALESCE((SELECT MAX(seq) FROM parley_messages), 0),
		COALESCE((SELECT MAX(seq) FROM parley_poison), 0))`).Scan(&h)
	return uint64(h), err
}

// Count implements Store.
func (s *SQLite) Count(ctx context.Context) (messages, poison int64, err error) {
	err = s.db.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM parley_messages), (SELECT COUNT(*) FROM parley_poison)`).
		Scan(&messages, &poison)
	if err != nil {
		return 0, 0, fmt.Errorf("sqlite count: %w", err)
	}
	return messages, poison, nil
}

// Ping implements Store.
func (s *SQLite) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("sqlite ping: %w", err)
	}
	return nil
}

// Close implements Store.
func (s *SQLite) Close() error {
	if err := s.db.Close(); err != nil && !errors.Is(err, sql.ErrConnDone) {
		return fmt.Errorf("sqlite close: %w", err)
	}
	return nil
}
