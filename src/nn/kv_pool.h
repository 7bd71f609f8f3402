// nn: the decoder's self-attention keys and values, paged. A KvPool owns fixed-size
// blocks, each holding kBlockPositions positions of every decoder layer's keys and values
// (float32), allocated lazily in chunks and reused once released. A KvSequence is one
// token sequence: a table of reference-counted blocks. fork() shares every block of the
// table (no key or value is copied); a block is copied only when a sequence writes into a
// partially filled block that another sequence holds and has already written past
// (copy-on-write of a tail, counted apart). Destroying a sequence returns its blocks; a
// chunk whose blocks are all free goes back to the system, one such chunk kept as a spare,
// so that a burst of long or many-beam decodes does not hold its memory for good. The
// pool also counts the bytes of each window's cross-attention keys and values (an
// AudioCharge held by the window's CrossAttentionCache, which every sequence decoding the
// window reads), so that its stats are the decoder's whole per-transcription memory.
//
// Threads: sequences are made, forked and released on request threads while the compute
// thread writes into others; the pool's bookkeeping is behind its mutex, and a block's
// storage never moves, so reads of the positions a sequence holds need no lock.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "kernels/backend.h"

namespace amanuensis::nn {

// The pool's counters, for `bench --json`, /metrics and the tests.
struct KvPoolStats {
  std::int64_t block_positions = 0;  // positions a block holds
  std::int64_t block_bytes = 0;      // bytes of one block (every layer's keys and values)
  std::int64_t capacity_bytes = 0;   // reserved: the chunks held now (used or free)
  std::int64_t used_bytes = 0;       // blocks held by at least one sequence
  std::int64_t peak_used_bytes = 0;  // the most used_bytes has been
  std::int64_t blocks_in_use = 0;
  std::int64_t sequences = 0;               // live sequences of the pool
  std::uint64_t forks = 0;                  // fork() calls
  std::uint64_t blocks_shared_at_fork = 0;  // block references a fork added (instead of copies)
  std::uint64_t positions_shared_at_fork = 0;  // positions those forks would have copied
  std::uint64_t blocks_copied = 0;      // every block copy: copy-on-write of a shared tail only
  std::uint64_t positions_copied = 0;   // the filled positions those copies held
  std::uint64_t chunks_returned = 0;    // chunks given back to the system once wholly free
  std::int64_t audio_bytes = 0;         // cross-attention keys and values of the windows held
  std::int64_t audio_entries = 0;       // those windows
  std::int64_t peak_audio_bytes = 0;
  std::int64_t peak_total_bytes = 0;    // the most used_bytes + audio_bytes has been
};

class KvSequence;
class AudioCharge;

class KvPool : public std::enable_shared_from_this<KvPool> {
 public:
  static constexpr std::int64_t kBlockPositions = 16;

  // `layers` decoder layers of `d` features; a sequence holds at most `max_positions`.
  static std::shared_ptr<KvPool> create(int layers, std::int64_t d, std::int64_t max_positions);
  // Only create() can name the key: a pool lives in a shared_ptr, which its sequences hold.
  class Key {
    friend class KvPool;
    Key() = default;
  };
  KvPool(Key, int layers, std::int64_t d, std::int64_t max_positions);
  // Reserved chunks stay with the pool (the next sequences reuse them) until it goes.
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;

  // An empty sequence of this pool (no block until its first position is written).
  KvSequence new_sequence();
  // Counts `bytes` of a window's cross-attention keys and values while the charge lives.
  AudioCharge charge_audio(std::int64_t bytes);
  // The blocks a sequence of `positions` positions holds at most, in bytes.
  std::int64_t sequence_bytes(std::int64_t positions) const;
  KvPoolStats stats() const;
  int layers() const { return layers_; }
  std::int64_t d() const { return d_; }
  std::int64_t max_positions() const { return max_positions_; }
  std::int64_t block_bytes() const { return block_floats_ * static_cast<std::int64_t>(sizeof(float)); }

 private:
  friend class KvSequence;
  friend class AudioCharge;
  using BlockId = std::int32_t;
  // A block in a sequence's table: its id and where its storage is (read without the lock).
  struct BlockRef {
    BlockId id = -1;
    float* data = nullptr;
  };
  struct BlockState {
    int refs = 0;
    std::int64_t filled = 0;  // slots [0, filled) written by some sequence; never rewritten while shared
  };

  BlockRef allocate();
  BlockRef allocate_locked();
  void release_locked(BlockId id);
  void release(std::span<const BlockRef> blocks);
  void share(std::span<const BlockRef> blocks, std::int64_t positions);
  // Makes `slot` of `block` writable for a sequence holding slots [0, slot) of it:
  // returns the block to write (itself, or a copy of its first `slot` slots).
  BlockRef writable(BlockRef block, std::int64_t slot);
  void add_sequences(int n);
  void add_audio(std::int64_t bytes, int entries);
  void copy_slots(const BlockRef& from, const BlockRef& to, std::int64_t slots) const;
  void add_chunk_locked();
  void return_chunk_locked(std::size_t chunk);
  std::size_t chunk_of(BlockId id) const { return static_cast<std::size_t>(id / blocks_per_chunk_); }
  std::int64_t chunk_bytes() const { return blocks_per_chunk_ * block_bytes(); }
  void note_peaks_locked();

  // A chunk of blocks_per_chunk_ blocks; its storage is null once returned (vacant).
  struct Chunk {
    std::unique_ptr<float[]> data;
    std::int64_t free_blocks = 0;
  };

  const int layers_;
  const std::int64_t d_;
  const std::int64_t max_positions_;
  const std::int64_t block_floats_;      // layers x {keys, values} x kBlockPositions x d
  const std::int64_t blocks_per_chunk_;  // chunks of a few MiB: few allocations, pages touched only when written

  mutable std::mutex mutex_;
  std::vector<Chunk> chunks_;
  std::vector<std::size_t> vacant_;  // chunks whose storage went back, reused before new ones
  std::int64_t spare_chunks_ = 0;    // chunks held with every block free
  std::vector<BlockState> blocks_;
  std::vector<BlockRef> free_;  // released blocks, the last released reused first (warm in cache)
  KvPoolStats stats_;
};

// Bytes counted in a pool's audio_bytes while the charge lives: a copy counts them again
// (a copied CrossAttentionCache holds its own keys and values).
class AudioCharge {
 public:
  AudioCharge() = default;
  AudioCharge(const AudioCharge& other);
  AudioCharge& operator=(const AudioCharge& other);
  AudioCharge(AudioCharge&& other) noexcept;
  AudioCharge& operator=(AudioCharge&& other) noexcept;
  ~AudioCharge();
  std::int64_t bytes() const { return bytes_; }

 private:
  friend class KvPool;
  AudioCharge(std::shared_ptr<KvPool> pool, std::int64_t bytes);
  void drop() noexcept;

  std::shared_ptr<KvPool> pool_;
  std::int64_t bytes_ = 0;
};

// One token sequence's keys and values: positions [0, length()) of every layer. Movable,
// not copyable (fork() shares explicitly); destroying it returns its blocks to the pool.
// A default-constructed sequence belongs to no pool (Decoder::new_sequence() makes one).
class KvSequence {
 public:
  KvSequence() = default;
  KvSequence(KvSequence&& other) noexcept;
  KvSequence& operator=(KvSequence&& other) noexcept;
  KvSequence(const KvSequence&) = delete;
  KvSequence& operator=(const KvSequence&) = delete;
  ~KvSequence();

  std::int64_t length() const { return length_; }
  // A sequence with the same positions that shares every block of this one: what a beam
  // or a best-of candidate that forks needs, without copying a key or a value.
  KvSequence fork() const;
  // Drops every position and block (the sequence stays usable, empty).
  void clear();
  // Bytes of the blocks this sequence holds (shared blocks counted in full).
  std::int64_t bytes() const;
  const KvPool* pool() const { return pool_.get(); }

  // For the decoder that writes and reads it (nn/whisper.cpp) ------------------------
  // Makes positions [length(), length() + count) writable: blocks are added, and a shared
  // tail another sequence has written past is copied. Throws InternalError beyond
  // max_positions (the decoder checks the text context first).
  void prepare(std::int64_t count);
  // Positions [length(), length() + count) are written: length() grows by count.
  void commit(std::int64_t count);
  // The d keys (values) of `position` in `layer`; the position must be prepared.
  std::span<float> keys(int layer, std::int64_t position);
  std::span<float> values(int layer, std::int64_t position);
  // Positions [0, positions) of `layer`, block by block, as the backend reads them.
  void blocks(int layer, std::int64_t positions, std::vector<kernels::KvBlockView>& out) const;
  // Positions [0, positions) of `layer` copied into contiguous rows (prompt passes).
  void gather(int layer, std::int64_t positions, std::span<float> keys, std::span<float> values) const;

 private:
  friend class KvPool;
  explicit KvSequence(std::shared_ptr<KvPool> pool) : pool_(std::move(pool)) {}
  float* row(int layer, int which, std::int64_t position) const;
  void check_held(std::int64_t positions) const;  // InternalError beyond the blocks held
  void drop() noexcept;  // returns every block and leaves the pool

  std::shared_ptr<KvPool> pool_;
  std::vector<KvPool::BlockRef> table_;  // block i holds positions [i * kBlockPositions, (i + 1) * kBlockPositions)
  std::int64_t length_ = 0;
};

}  // namespace amanuensis::nn
