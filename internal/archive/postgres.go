package archive

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Postgres is the production store (pgx, a connection pool). Any number of
// archiver replicas may write to it at once.
type Postgres struct {
	pool *pgxpool.Pool
}

// postgresMigrations are applied in order, each once, recorded in
// parley_schema, under an advisory lock so replicas starting together do not
// race. Never edit one that shipped: append.
//
// data is json, not jsonb: json keeps the text as published (key order,
// numbers), so history from the archive is byte-for-byte what the stream
// gives; jsonb would also refuse \u0000, which a payload may contain.
var postgresMigrations = []string{
	`CREATE TABLE parley_messages (
		seq     bigint      PRIMARY KEY,
		subject text        NOT NULL,
		kind    text        NOT NULL,
		name    text        NOT NULL,
		msg_id  text        NOT NULL,
		sender  text        NOT NULL,
		ts      timestamptz NOT NULL,
		data    json        NOT NULL,
		headers json
	);
	CREATE INDEX parley_messages_by_name_seq ON parley_messages (kind, name, seq);
	CREATE INDEX parley_messages_by_name_ts ON parley_messages (kind, name, ts);
	CREATE TABLE parley_poison (
		seq         bigint      PRIMARY KEY,
		subject     text        NOT NULL,
		reason      text        NOT NULL,
		payload     bytea       NOT NULL,
		headers     json,
		ts          timestamptz NOT NULL,
		recorded_at timestamptz NOT NULL DEFAULT now()
	);`,
	// 2: per block of 4096 sequences (seqBlock), how many are archived, so
	// that the archive can prove it holds a long stretch of the stream
	// without reading it row by row (coverage.go). Statement triggers keep
	// the counts in the writing transaction, whoever writes (an archiver of
	// the previous version during a rolling upgrade too), one upsert per
	// statement and block, blocks in ascending order. The lock makes the
	// backfill see every row committed before the triggers exist and keeps
	// writers out until they do.
	`LOCK TABLE parley_messages, parley_poison IN SHARE ROW EXCLUSIVE MODE;
	CREATE TABLE parley_seq_blocks (
		block bigint  PRIMARY KEY,
		held  integer NOT NULL
	);
	CREATE FUNCTION parley_seqs_held() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
	BEGIN
		INSERT INTO parley_seq_blocks (block, held)
			SELECT (seq - 1) / 4096, COUNT(*) FROM parley_new_seqs GROUP BY 1 ORDER BY 1
			ON CONFLICT (block) DO UPDATE SET held = parley_seq_blocks.held + EXCLUDED.held;
		RETURN NULL;
	END $$;
	CREATE FUNCTION parley_seqs_gone() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
	BEGIN
		UPDATE parley_seq_blocks b SET held = b.held - g.n
			FROM (SELECT (seq - 1) / 4096 AS block, COUNT(*) AS n FROM parley_old_seqs GROUP BY 1) g
			WHERE b.block = g.block;
		RETURN NULL;
	END $$;
	CREATE FUNCTION parley_seqs_recount() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
	BEGIN
		DELETE FROM parley_seq_blocks;
		INSERT INTO parley_seq_blocks (block, held)
			SELECT (seq - 1) / 4096, COUNT(*)
			FROM (SELECT seq FROM parley_messages UNION SELECT seq FROM parley_poison) s
			GROUP BY 1;
		RETURN NULL;
	END $$;
	CREATE TRIGGER parley_messages_held AFTER INSERT ON parley_messages
		REFERENCING NEW TABLE AS parley_new_seqs FOR EACH STATEMENT EXECUTE FUNCTION parley_seqs_held();
	CREATE TRIGGER parley_poison_held AFTER INSERT ON parley_poison
		REFERENCING NEW TABLE AS parley_new_seqs FOR EACH STATEMENT EXECUTE FUNCTION parley_seqs_held();
	CREATE TRIGGER parley_messages_gone AFTER DELETE ON parley_messages
		REFERENCING OLD TABLE AS parley_old_seqs FOR EACH STATEMENT EXECUTE FUNCTION parley_seqs_gone();
	CREATE TRIGGER parley_poison_gone AFTER DELETE ON parley_poison
		REFERENCING OLD TABLE AS parley_old_seqs FOR EACH STATEMENT EXECUTE FUNCTION parley_seqs_gone();
	CREATE TRIGGER parley_messages_truncated AFTER TRUNCATE ON parley_messages
		FOR EACH STATEMENT EXECUTE FUNCTION parley_seqs_recount();
	CREATE TRIGGER parley_poison_truncated AFTER TRUNCATE ON parley_poison
		FOR EACH STATEMENT EXECUTE FUNCTION parley_seqs_recount();
	INSERT INTO parley_seq_blocks (block, held)
		SELECT (seq - 1) / 4096, COUNT(*)
		FROM (SELECT seq FROM parley_messages UNION SELECT seq FROM parley_poison) s
		GROUP BY 1;`,
}

// migrationLock is the advisory lock key of schema migrations ("parley").
const migrationLock = 0x7061726c6579

// OpenPostgres connects to dsn and migrates the schema.
func OpenPostgres(ctx context.Context, dsn string) (*Postgres, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: postgres DSN: %w", ErrBadConfig, err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	p := &Postgres{pool: pool}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return p, nil
}

func (p *Postgres) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
			return fmt.Errorf("postgres migrate: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS parley_schema (version int NOT NULL)`); err != nil {
			return fmt.Errorf("postgres migrate: %w", err)
		}
		var version int
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM parley_schema`).Scan(&version); err != nil {
			return fmt.Errorf("postgres migrate: %w", err)
		}
		if version > len(postgresMigrations) {
			return fmt.Errorf("%w: postgres schema version %d is newer than this archiver knows (%d)", ErrBadConfig, version, len(postgresMigrations))
		}
		for v := version + 1; v <= len(postgresMigrations); v++ {
			if _, err := tx.Exec(ctx, postgresMigrations[v-1]); err != nil {
				return fmt.Errorf("postgres migration %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO parley_schema (version) VALUES ($1)`, v); err != nil {
				return fmt.Errorf("postgres migration %d: %w", v, err)
			}
		}
		return nil
	})
}

// Write implements Store. The records go in one statement over unnest'ed
// arrays: one round trip per batch whatever its size.
func (p *Postgres) Write(ctx context.Context, b Batch) (int, error) {
	if b.Len() == 0 {
		return 0, nil
	}
	n := len(b.Records)
	seqs, subjects, kinds, names := make([]int64, n), make([]string, n), make([]string, n), make([]string, n)
	msgIDs, senders, times, datas, headers := make([]string, n), make([]string, n), make([]time.Time, n), make([]string, n), make([]string, n)
	for i := range b.Records {
		r := &b.Records[i]
		h, err := encodeHeaders(r.Headers)
		if err != nil {
			return 0, err
		}
		seqs[i], subjects[i], kinds[i], names[i] = int64(r.Seq), r.Subject, string(r.Kind), r.Name
		msgIDs[i], senders[i], times[i], datas[i], headers[i] = r.MsgID, r.From, r.Time, string(r.Data), h
	}
	inserted := 0
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if n > 0 {
			// A seq recorded as poison (by an earlier delivery) is not
			// also stored as a message, nor the other way round: each
			// archived sequence is counted once (coverage.go).
			tag, err := tx.Exec(ctx, `INSERT INTO parley_messages (seq, subject, kind, name, msg_id, sender, ts, data, headers)
				SELECT s, subj, k, nm, mid, f, t, d::json, NULLIF(h, '')::json
				FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::text[])
					AS u(s, subj, k, nm, mid, f, t, d, h)
				WHERE NOT EXISTS (SELECT 1 FROM parley_poison p WHERE p.seq = u.s)
				ON CONFLICT (seq) DO NOTHING`,
				seqs, subjects, kinds, names, msgIDs, senders, times, datas, headers)
			if err != nil {
				return pgError("postgres insert", err)
			}
			inserted = int(tag.RowsAffected())
		}
		for i := range b.Poison {
			q := &b.Poison[i]
			h, err := encodeHeaders(q.Headers)
			if err != nil {
				return err
			}
			payload := q.Payload
			if payload == nil {
				payload = []byte{}
			}
			if _, err := tx.Exec(ctx, `INSERT INTO parley_poison (seq, subject, reason, payload, headers, ts)
				SELECT $1, $2, $3, $4, NULLIF($5, '')::json, $6
				WHERE NOT EXISTS (SELECT 1 FROM parley_messages WHERE seq = $1)
				ON CONFLICT (seq) DO NOTHING`,
				int64(q.Seq), q.Subject, q.Reason, payload, h, q.Time); err != nil {
				return pgError(fmt.Sprintf("postgres insert poison seq %d", q.Seq), err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("postgres write of %d messages from seq %d: %w", b.Len(), firstSeq(b), err)
	}
	return inserted, nil
}

// pgError wraps err, marking the errors PostgreSQL will repeat however often
// we retry the same data (SQLSTATE classes 22 data exception, 23 integrity
// constraint violation, 54 program limit exceeded) as ErrRejected, so the
// archiver can isolate the culprit.
func pgError(what string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "23") || strings.HasPrefix(pe.Code, "54")) {
		return fmt.Errorf("%s: %w: %w", what, ErrRejected, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// History implements Store. Rows and coverage are read in one read-only
// REPEATABLE READ transaction: one snapshot.
func (p *Postgres) History(ctx context.Context, q HistoryQuery) ([]Record, *Coverage, error) {
	var where strings.Builder
	args := []any{string(q.Kind), q.Name}
	where.WriteString(`kind = $1 AND name = $2`)
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if q.Before > 0 {
		where.WriteString(` AND seq < ` + arg(int64(q.Before)))
	}
	if !q.BeforeTime.IsZero() {
		where.WriteString(` AND ts < ` + arg(q.BeforeTime))
	}
	order := "DESC"
	if q.After != nil {
		where.WriteString(` AND seq > ` + arg(int64(*q.After)))
		order = "ASC"
	}
	limit := arg(q.Limit)
	var out []Record
	var cov *Coverage
	err := pgx.BeginTxFunc(ctx, p.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT seq, subject, kind, name, msg_id, sender, ts, data::text, COALESCE(headers::text, '')
			FROM parley_messages WHERE `+where.String()+` ORDER BY seq `+order+` LIMIT `+limit, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r Record
			var seq int64
			var kind, data, headers string
			if err := rows.Scan(&seq, &r.Subject, &kind, &r.Name, &r.MsgID, &r.From, &r.Time, &data, &headers); err != nil {
				return err
			}
			r.Seq, r.Kind, r.Data = uint64(seq), Kind(kind), []byte(data)
			if r.Headers, err = decodeHeaders(headers); err != nil {
				return err
			}
			out = append(out, r)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if q.After == nil {
			reverse(out)
		}
		cov, err = spanned(ctx, pgSnapshot{tx}, q, out)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("postgres history: %w", err)
	}
	return out, cov, nil
}

// pgSnapshot reads coverage inside a read transaction.
type pgSnapshot struct{ tx pgx.Tx }

func (s pgSnapshot) seqsIn(ctx context.Context, lo, hi uint64) ([]uint64, error) {
	rows, err := s.tx.Query(ctx, `SELECT seq FROM parley_messages WHERE seq BETWEEN $1 AND $2
		UNION SELECT seq FROM parley_poison WHERE seq BETWEEN $1 AND $2 ORDER BY 1`, int64(lo), int64(hi))
	if err != nil {
		return nil, err
	}
	seqs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, err
	}
	out := make([]uint64, len(seqs))
	for i, s := range seqs {
		out[i] = uint64(s)
	}
	return out, nil
}

func (s pgSnapshot) blockSum(ctx context.Context, k1, k2 uint64) (rows, held uint64, err error) {
	var r, h int64
	err = s.tx.QueryRow(ctx, `SELECT COUNT(*), COALESCE(SUM(held), 0) FROM parley_seq_blocks
		WHERE block BETWEEN $1 AND $2`, int64(k1), int64(k2)).Scan(&r, &h)
	return uint64(r), uint64(h), err
}

func (s pgSnapshot) firstNotFull(ctx context.Context, k1, k2 uint64) (uint64, error) {
	var k int64
	err := s.tx.QueryRow(ctx, `SELECT COALESCE(MIN(k), $2 + 1) FROM (
			SELECT block AS k FROM parley_seq_blocks WHERE block BETWEEN $1 AND $2 AND held <> 4096
			UNION ALL
			SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM parley_seq_blocks WHERE block = $1)
			UNION ALL
			SELECT b.block + 1 FROM parley_seq_blocks b WHERE b.block BETWEEN $1 AND $2 - 1
				AND NOT EXISTS (SELECT 1 FROM parley_seq_blocks n WHERE n.block = b.block + 1)) ks`,
		int64(k1), int64(k2)).Scan(&k)
	return uint64(k), err
}

func (s pgSnapshot) highest(ctx context.Context) (uint64, error) {
	var h int64
	err := s.tx.QueryRow(ctx, `SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM parley_messages), 0),
		COALESCE((SELECT MAX(seq) FROM parley_poison), 0))`).Scan(&h)
	return uint64(h), err
}

// Count implements Store.
func (p *Postgres) Count(ctx context.Context) (messages, poison int64, err error) {
	err = p.pool.QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM parley_messages), (SELECT COUNT(*) FROM parley_poison)`).
		Scan(&messages, &poison)
	if err != nil {
		return 0, 0, fmt.Errorf("postgres count: %w", err)
	}
	return messages, poison, nil
}

// Ping implements Store.
func (p *Postgres) Ping(ctx context.Context) error {
	if err := p.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres ping: %w", err)
	}
	return nil
}

// Close implements Store.
func (p *Postgres) Close() error {
	p.pool.Close()
	return nil
}
