package archive

import (
	"context"
	"fmt"
)

// What the archive can prove it holds. Stream sequences are unique across
// the chat stream and every one is a stored message (a room's, a direct
// message, a broadcast), and the archiver writes each one it reads into
// parley_messages or, undecodable, parley_poison. So the archive holds every
// message of every room in a stretch of sequences exactly when it holds every
// sequence of the stretch; a sequence it never committed (still in a batch,
// or gone from the stream before any archiver read it) breaks the stretch.
// This is the archive's own claim, from its committed rows: the consumer's
// ack floor cannot make it, because JetStream moves the floor past messages
// that left the stream unacked or undelivered.
//
// Counting a stretch row by row would read every row of a long absence, so
// parley_seq_blocks keeps, per block of seqBlock consecutive sequences, how
// many of them are archived. Triggers on both tables maintain it in the
// inserting transaction, so every writer keeps it exact, including an older
// archiver still running during an upgrade.

// seqBlock is how many consecutive sequences one parley_seq_blocks row
// counts: block k counts the archived sequences in [k*seqBlock+1,
// (k+1)*seqBlock]. The migrations that create the table and its triggers
// spell the number out, so it can never change.
const seqBlock = 4096

// Coverage is a stretch the archive holds entirely: every stream sequence s
// with After < s <= Through is archived (a message or a poison entry).
type Coverage struct {
	After, Through uint64
}

// seqSnapshot reads what the archive holds, from one consistent snapshot.
type seqSnapshot interface {
	// seqsIn returns the archived sequences in [lo, hi], ascending; hi-lo
	// is less than seqBlock.
	seqsIn(ctx context.Context, lo, hi uint64) ([]uint64, error)
	// blockSum returns how many of the blocks k1..k2 have a row and the
	// sum of their counts.
	blockSum(ctx context.Context, k1, k2 uint64) (rows, held uint64, err error)
	// firstNotFull returns the lowest block in k1..k2 whose count is not
	// seqBlock (a missing row counts as 0), or k2+1 when there is none.
	firstNotFull(ctx context.Context, k1, k2 uint64) (uint64, error)
	// highest returns the highest archived sequence (0: none).
	highest(ctx context.Context) (uint64, error)
}

// noBound as the end of a stretch means the highest archived sequence.
const noBound = ^uint64(0)

// coveredThrough returns the highest t in [after, upTo] such that every
// sequence in (after, t] is archived; upTo noBound means up to the highest
// archived sequence. Whole blocks are judged by their counts, and only a
// stretch's ragged ends (or a block whose count says it lacks something)
// are read row by row, so the cost is a few thousand rows plus one index
// row per block however long the stretch.
func coveredThrough(ctx context.Context, s seqSnapshot, after, upTo uint64) (uint64, error) {
	if upTo == noBound {
		h, err := s.highest(ctx)
		if err != nil {
			return 0, err
		}
		upTo = h
	}
	lo := after + 1
	for lo <= upTo {
		k := (lo - 1) / seqBlock
		end := (k + 1) * seqBlock // the block's last sequence
		if lo == k*seqBlock+1 && end <= upTo {
			// Whole blocks from k on: skip those whose counts are full.
			last := upTo/seqBlock - 1 // the last block that ends within upTo
			rows, held, err := s.blockSum(ctx, k, last)
			if err != nil {
				return 0, err
			}
			if n := last - k + 1; rows == n && held == n*seqBlock {
				lo = (last+1)*seqBlock + 1
				continue
			}
			f, err := s.firstNotFull(ctx, k, last)
			if err != nil {
				return 0, err
			}
			if f > k {
				lo = f*seqBlock + 1
				continue
			}
			// Block k itself: its rows say where the stretch ends (the
			// rows are the truth, the count only a summary of them).
		}
		hi := min(end, upTo)
		seqs, err := s.seqsIn(ctx, lo, hi)
		if err != nil {
			return 0, err
		}
		for i, seq := range seqs {
			if seq != lo+uint64(i) {
				return lo + uint64(i) - 1, nil
			}
		}
		if n := uint64(len(seqs)); n < hi-lo+1 {
			return lo + n - 1, nil
		}
		lo = hi + 1
	}
	return max(upTo, after), nil
}

// spanned computes, for a history read, the coverage of the stretch span
// names (see HistoryQuery.Cover) from the same snapshot as the rows.
func spanned(ctx context.Context, s seqSnapshot, q HistoryQuery, rows []Record) (*Coverage, error) {
	if q.Cover == nil {
		return nil, nil
	}
	after, upTo := q.Cover(rows)
	through, err := coveredThrough(ctx, s, after, upTo)
	if err != nil {
		return nil, fmt.Errorf("coverage of (%d, %d]: %w", after, upTo, err)
	}
	return &Coverage{After: after, Through: through}, nil
}
