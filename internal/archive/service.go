package archive

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// HistoryRequest and HistoryResponse are the history service's wire types,
// declared once in the jetstream package, where the edge reads them too
// (without importing this package and its store drivers).
type (
	HistoryRequest  = pjs.ArchiveHistoryRequest
	HistoryResponse = pjs.ArchiveHistoryResponse
)

// Default and maximum page sizes.
const defaultHistoryLimit = 50

// historyWorkers bounds the queries one replica runs at once; more requests
// wait in the subscription (and go to other replicas via the queue group).
const historyWorkers = 16

type historyService struct {
	a   *Archiver
	svc micro.Service
	sem chan struct{}
}

func newHistoryService(a *Archiver) (*historyService, error) {
	h := &historyService{a: a, sem: make(chan struct{}, historyWorkers)}
	svc, err := micro.AddService(a.nc, micro.Config{
		Name:        "parley-archive",
		Version:     "1.0.0",
		Description: "Parley archive: chat history older than the stream keeps",
		Endpoint: &micro.EndpointConfig{
			Subject: a.cfg.HistorySubject,
			Handler: micro.HandlerFunc(h.handle),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("history service on %s: %w", a.cfg.HistorySubject, err)
	}
	h.svc = svc
	return h, nil
}

func (h *historyService) Stop() {
	_ = h.svc.Stop()
	// Wait for queries in flight: the store closes after Run returns.
	for range historyWorkers {
		h.sem <- struct{}{}
	}
}

// handle runs on the subscription's goroutine: it only takes a worker slot,
// so one slow query does not hold up the others. The worker answers on the
// request's reply subject itself: micro's Request is not safe to use after
// the handler returned (micro reads it for its stats), so micro's own
// per-endpoint stats count requests but not their errors or time; the
// parley_archiver_history_requests_total metric has both.
func (h *historyService) handle(req micro.Request) {
	data, reply := req.Data(), req.Reply()
	if reply == "" {
		return // nobody to answer
	}
	h.sem <- struct{}{}
	go func() {
		defer func() { <-h.sem }()
		h.serve(data, reply)
	}()
}

func (h *historyService) serve(data []byte, reply string) {
	ctx, cancel := context.WithTimeout(context.Background(), h.a.cfg.QueryTimeout)
	defer cancel()
	msg := nats.NewMsg(reply)
	resp, err := h.query(ctx, data)
	if err == nil {
		msg.Data, err = json.Marshal(resp)
	}
	if err != nil {
		e := protocol.ErrorReply(0, err).Error
		h.a.metrics.History.WithLabelValues(string(e.Code)).Inc()
		if e.Code == protocol.CodeInternal || e.Code == protocol.CodeUnavailable {
			h.a.log.Warn("history request failed", "err", err)
		}
		status := map[protocol.Code]string{protocol.CodeBadRequest: "400", protocol.CodeUnavailable: "503"}[e.Code]
		if status == "" {
			status = "500"
		}
		msg.Data, _ = json.Marshal(HistoryResponse{Error: e})
		msg.Header.Set(micro.ErrorCodeHeader, status)
		msg.Header.Set(micro.ErrorHeader, e.Message)
	} else {
		h.a.metrics.History.WithLabelValues("ok").Inc()
	}
	if err := h.a.nc.PublishMsg(msg); err != nil {
		h.a.log.Warn("history reply not sent", "err", err)
	}
}

func (h *historyService) query(ctx context.Context, data []byte) (*HistoryResponse, error) {
	var r HistoryRequest
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%w: request is not a JSON history request: %w", protocol.ErrBadRequest, err)
	}
	if err := protocol.CheckName("room", r.Room); err != nil {
		return nil, err
	}
	if r.Limit < 0 || r.BeforeTS < 0 {
		return nil, fmt.Errorf("%w: limit and before_ts must not be negative", protocol.ErrBadRequest)
	}
	limit := r.Limit
	if limit == 0 {
		limit = defaultHistoryLimit
	}
	limit = min(limit, h.a.cfg.HistoryMax)
	q := HistoryQuery{Kind: KindRoom, Name: r.Room, Before: r.Before, After: r.After, Limit: limit + 1}
	if r.BeforeTS > 0 {
		q.BeforeTime = time.UnixMilli(r.BeforeTS)
	}
	q.Cover = func(rows []Record) (after, upTo uint64) {
		return replySpan(&r, limit, rows)
	}
	recs, cov, err := h.a.store.History(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", protocol.ErrUnavailable, err)
	}
	resp := &HistoryResponse{Msgs: []json.RawMessage{}}
	if len(recs) > limit {
		resp.More = true
		if r.After != nil {
			recs = recs[:limit] // oldest first: the extra one is the newest
		} else {
			recs = recs[1:] // the extra one is the oldest
		}
	}
	for i := range recs {
		resp.Msgs = append(resp.Msgs, protocol.AppendMsg(nil, pushMsg(&recs[i])))
	}
	if cov != nil {
		resp.Covered = &pjs.ArchiveCoverage{After: cov.After, Through: cov.Through}
	}
	return resp, nil
}

// replySpan is the stretch of the stream a reply speaks for, from the rows
// read (limit+1 of them at most, oldest first): where its messages begin
// and end, and so what the archive must hold for the reply to have skipped
// nothing (see pjs.ArchiveCoverage). Forwards (after): from after up to the
// newest message returned when there are more, else up to before. Backwards:
// from the oldest message returned when there are more (older ones are
// another page), else from the stream's beginning (the reply claims to reach
// the room's first message), up to before.
func replySpan(r *HistoryRequest, limit int, rows []Record) (after, upTo uint64) {
	more := len(rows) > limit
	upTo = noBound
	if r.Before > 0 {
		upTo = r.Before - 1
	}
	if r.After != nil {
		if more {
			upTo = rows[limit-1].Seq
		}
		return *r.After, upTo
	}
	if more {
		return rows[1].Seq, upTo
	}
	return 0, upTo
}
