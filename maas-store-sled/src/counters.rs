//! Counters on the writer thread: remaining-uses balances (`balances`) and
//! limit counters (`windows`: rate-limit windows, token limits, budgets).
//!
//! Every change runs on the writer thread, the only writer of these trees,
//! so each operation is a read, the arithmetic of `maas_core::counter`, and
//! a write, with no other writer in between. Each write is noted in the
//! round's journal record (`crate::journal`), which is synced before the
//! answer leaves. A reservation over several counters writes them
//! one after another: readers cannot observe the gap (no reader of these
//! trees runs on the writer thread), and a crash inside it leaves part of a
//! reservation nobody was told about taken, which errs towards refusing,
//! never towards spending twice.

use maas_core::counter::{
    Balance, BalanceOp, LimitOp, LimitSpec, LimitState, Refill, Reserved, SettleOp, Spend,
    WindowTake, reserve_all,
};
use maas_core::{Result, Timestamp};

use crate::codec::{decode_balance, decode_limit, encode_balance, encode_limit};
use crate::journal::{Journal, Journaled};
use crate::store::Trees;

impl Trees {
    pub(crate) fn balance(&self, id: &str) -> Result<Option<Balance>> {
        Ok(self
            .get_journaled(Journaled::Balances, id.as_bytes())?
            .and_then(|v| decode_balance(&v)))
    }

    pub(crate) fn put_balance(
        &self,
        j: &mut Journal,
        id: &str,
        balance: Option<Balance>,
    ) -> Result<()> {
        let bytes = balance.map(|b| encode_balance(&b));
        self.put_journaled(
            j,
            Journaled::Balances,
            id.as_bytes(),
            bytes.as_ref().map(|b| &b[..]),
        )
    }

    pub(crate) fn spend(
        &self,
        j: &mut Journal,
        id: &str,
        cost: u64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend> {
        let Some(b) = self.balance(id)? else {
            return Ok(Spend {
                spent: false,
                balance: None,
            });
        };
        let (spent, after) = b.refilled(refill, now).spend(cost);
        self.put_balance(j, id, Some(after))?;
        Ok(Spend {
            spent,
            balance: Some(after),
        })
    }

    pub(crate) fn adjust(
        &self,
        j: &mut Journal,
        id: &str,
        op: BalanceOp,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Option<Balance>> {
        let Some(b) = self.balance(id)? else {
            return Ok(None);
        };
        let after = op.apply(b.refilled(refill, now));
        self.put_balance(j, id, Some(after))?;
        Ok(Some(after))
    }

    fn limit_state(&self, id: &str) -> Result<Option<LimitState>> {
        Ok(self
            .get_journaled(Journaled::Windows, id.as_bytes())?
            .and_then(|v| decode_limit(&v)))
    }

    fn put_limit(&self, j: &mut Journal, id: &str, state: &LimitState) -> Result<()> {
        let bytes = encode_limit(state);
        self.put_journaled(j, Journaled::Windows, id.as_bytes(), Some(&bytes))
    }

    /// One limit op.
    pub(crate) fn take_limit(
        &self,
        j: &mut Journal,
        id: &str,
        spec: &LimitSpec,
        cost: u64,
        now: Timestamp,
    ) -> Result<WindowTake> {
        let (next, take) = spec.take(self.limit_state(id)?, cost, now);
        self.put_limit(j, id, &next)?;
        Ok(take)
    }

    pub(crate) fn reset_window(&self, j: &mut Journal, id: &str) -> Result<()> {
        self.put_journaled(j, Journaled::Windows, id.as_bytes(), None)
    }

    pub(crate) fn reserve(
        &self,
        j: &mut Journal,
        ops: &[LimitOp],
        now: Timestamp,
    ) -> Result<Reserved> {
        if let [op] = ops {
            let d = self.take_limit(j, &op.id, &op.spec, op.cost, now)?;
            return Ok(Reserved {
                admitted: d.allowed,
                decisions: vec![d],
            });
        }
        let mut before: Vec<(&str, Option<LimitState>)> = Vec::with_capacity(ops.len());
        for op in ops {
            before.push((op.id.as_str(), self.limit_state(&op.id)?));
        }
        let (out, states) = reserve_all(ops, now, |id| {
            before.iter().find(|(i, _)| *i == id).and_then(|(_, s)| *s)
        });
        for (op, state) in ops.iter().zip(&states) {
            self.put_limit(j, &op.id, state)?;
        }
        Ok(out)
    }

    pub(crate) fn settle(
        &self,
        j: &mut Journal,
        ops: &[SettleOp],
        now: Timestamp,
    ) -> Result<Vec<LimitState>> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let state = self.limit_state(&op.id)?;
            let (next, _) = op
                .spec
                .settle(state, op.taken_at, op.reserved, op.used, now);
            self.put_limit(j, &op.id, &next)?;
            out.push(next);
        }
        Ok(out)
    }
}
