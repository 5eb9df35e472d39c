//! An ordered IO thread: jobs queued from the async driver run one after another on a thread
//! of their own, so file and store IO never blocks the runtime and keeps its order.

use std::sync::mpsc;
use std::thread::JoinHandle;

/// A thread that runs each queued job in order; closing it runs what is queued first.
#[derive(Debug)]
pub struct IoThread<T: Send + 'static> {
    tx: Option<mpsc::Sender<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> IoThread<T> {
    /// Starts the thread `name`, running `run` on each job.
    ///
    /// # Errors
    /// The thread cannot start.
    pub fn start(name: &str, mut run: impl FnMut(T) + Send + 'static) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<T>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || rx.into_iter().for_each(&mut run))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a job.
    pub fn submit(&self, job: T) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }

    /// Runs every queued job, then stops the thread (blocking).
    pub fn close(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<T: Send + 'static> Drop for IoThread<T> {
    fn drop(&mut self) {
        self.close();
    }
}
