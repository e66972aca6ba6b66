//! Reading a partition's queue many messages at a time.
//!
//! rdkafka's safe API polls a queue one message per call, and each call reads the clock twice
//! (once in rdkafka, once in librdkafka, which records when the application last polled) and
//! takes the partition's lock to move its application position. librdkafka's batch consume
//! (`rd_kafka_consume_batch_queue`) does each of those once per batch. This module wraps it.

use std::ffi::CString;
use std::sync::Arc;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

/// At most this many messages per batch: enough to pay for the per-batch work many times over,
/// few enough that flow control, which looks between batches, overshoots by little.
pub const BATCH: usize = 64;

/// One message of a batch, borrowed from librdkafka until the batch is released.
pub struct Fetched<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

/// A second handle on a partition's queue (the one `split_partition_queue` took off the
/// consumer's main queue), for batch reads. It holds the consumer so that the client outlives
/// the queue.
pub struct BatchQueue<C: ConsumerContext + 'static> {
    queue: *mut rd::rd_kafka_queue_t,
    slots: Vec<*mut rd::rd_kafka_message_t>,
    _consumer: Arc<BaseConsumer<C>>,
}

impl<C: ConsumerContext + 'static> BatchQueue<C> {
    /// The queue of `partition` of `topic`; `None` if the consumer does not know it.
    pub fn new(consumer: &Arc<BaseConsumer<C>>, topic: &str, partition: i32) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives, and `topic` is a
        // NUL-terminated string that outlives the call. The call returns a new reference to
        // the partition's queue (or null), released in `drop`.
        let queue = unsafe {
            rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            )
        };
        (!queue.is_null()).then(|| BatchQueue {
            queue,
            slots: vec![std::ptr::null_mut(); BATCH],
            _consumer: Arc::clone(consumer),
        })
    }

    /// Takes up to `max` (at most [`BATCH`]) messages without waiting and calls `each` on
    /// them in order: a message, or the error librdkafka delivered in its place (the end of
    /// the partition among them). Returns how many it took.
    pub fn consume(
        &mut self,
        max: usize,
        mut each: impl FnMut(Result<Fetched<'_>, KafkaError>),
    ) -> usize {
        let max = max.min(BATCH);
        if max == 0 {
            return 0;
        }
        // SAFETY: `queue` is a live reference (see `new`), and `slots` has room for `max`
        // pointers. A timeout of 0 returns at once; librdkafka fills the first `n` slots with
        // messages the caller owns until it destroys them.
        let n = unsafe {
            rd::rd_kafka_consume_batch_queue(self.queue, 0, self.slots.as_mut_ptr(), max)
        };
        let n = usize::try_from(n).unwrap_or(0);
        for &message in &self.slots[..n] {
            // SAFETY: each of the first `n` slots points to a message librdkafka handed over
            // and that is not yet destroyed; its payload and key (when not null) point to
            // `len` and `key_len` bytes that live as long as the message. The slices do not
            // outlive this iteration: `each` takes them for a lifetime of its caller's choosing,
            // so it cannot keep them, and the message is destroyed right after it returns.
            unsafe {
                let m = &*message;
                let result = if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    Ok(Fetched {
                        partition: m.partition,
                        offset: m.offset,
                        key: bytes(m.key, m.key_len),
                        payload: bytes(m.payload, m.len),
                    })
                } else if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF {
                    Err(KafkaError::PartitionEOF(m.partition))
                } else {
                    Err(KafkaError::MessageConsumption(m.err.into()))
                };
                each(result);
                rd::rd_kafka_message_destroy(message);
            }
        }
        n
    }
}

/// The bytes at `ptr` (`None` when null), borrowed for as long as the caller says.
unsafe fn bytes<'a>(ptr: *mut std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: the caller passes a message's pointer and length, valid while it lives.
    (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

impl<C: ConsumerContext + 'static> Drop for BatchQueue<C> {
    fn drop(&mut self) {
        // SAFETY: `queue` is the reference taken in `new`, released exactly once, while the
        // consumer (held by `_consumer`, dropped after this) is still alive.
        unsafe { rd::rd_kafka_queue_destroy(self.queue) }
    }
}
