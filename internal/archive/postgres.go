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
			tag, err := tx.Exec(ctx, `INSERT INTO parley_messages (seq, subject, kind, name, msg_id, sender, ts, data, headers)
				SELECT s, subj, k, nm, mid, f, t, d::json, NULLIF(h, '')::json
				FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::text[])
					AS u(s, subj, k, nm, mid, f, t, d, h)
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
				VALUES ($1, $2, $3, $4, NULLIF($5, '')::json, $6) ON CONFLICT (seq) DO NOTHING`,
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

// History implements Store.
func (p *Postgres) History(ctx context.Context, q HistoryQuery) ([]Record, error) {
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
	rows, err := p.pool.Query(ctx, `SELECT seq, subject, kind, name, msg_id, sender, ts, data::text, COALESCE(headers::text, '')
		FROM parley_messages WHERE `+where.String()+` ORDER BY seq `+order+` LIMIT `+limit, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres history: %w", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		var r Record
		var seq int64
		var kind, data, headers string
		if err := rows.Scan(&seq, &r.Subject, &kind, &r.Name, &r.MsgID, &r.From, &r.Time, &data, &headers); err != nil {
			return nil, fmt.Errorf("postgres history: %w", err)
		}
		r.Seq, r.Kind, r.Data = uint64(seq), Kind(kind), []byte(data)
		if r.Headers, err = decodeHeaders(headers); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres history: %w", err)
	}
	if q.After == nil {
		reverse(out)
	}
	return out, nil
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
