//! App state for steps: values a service registers once
//! ([`RuntimeBuilder::state`](crate::RuntimeBuilder::state)) and its steps borrow
//! (`#[state]` parameters, [`StepContext::state`](crate::StepContext::state)). State
//! is never recorded: it is not a step's argument, not part of its fingerprint, and a
//! replayed step never looks at it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The state a runtime was given, by type.
#[derive(Default, Clone)]
pub(crate) struct States {
    by_type: HashMap<TypeId, Entry>,
}

#[derive(Clone)]
struct Entry {
    /// The `Arc<T>` given, itself in an `Arc`: `T` may be unsized (`dyn Gateway`).
    value: Arc<dyn Any + Send + Sync>,
    type_name: &'static str,
}

impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.by_type.values().map(|e| e.type_name))
            .finish()
    }
}

impl States {
    /// Adds `value`; `Err` with its type's name if that type is there already.
    pub(crate) fn insert<T: ?Sized + Send + Sync + 'static>(
        &mut self,
        value: Arc<T>,
    ) -> Result<(), &'static str> {
        let type_name = std::any::type_name::<T>();
        match self.by_type.entry(TypeId::of::<T>()) {
            std::collections::hash_map::Entry::Occupied(_) => Err(type_name),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Entry {
                    value: Arc::new(value),
                    type_name,
                });
                Ok(())
            }
        }
    }

    /// The value of type `T`, if one was registered.
    pub(crate) fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let entry = self.by_type.get(&TypeId::of::<T>())?;
        entry.value.downcast_ref::<Arc<T>>().cloned()
    }

    /// The first of `needs` that is not registered.
    pub(crate) fn missing(&self, needs: &[StateType]) -> Option<&'static str> {
        needs
            .iter()
            .find(|n| !self.by_type.contains_key(&(n.id)()))
            .map(|n| (n.name)())
    }
}

/// A type of state a step takes through a `#[state]` parameter: what the code `#[step]`
/// generates lists in the step's options, so the runtime checks them all before the
/// body runs.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct StateType {
    id: fn() -> TypeId,
    name: fn() -> &'static str,
}

impl std::fmt::Debug for StateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str((self.name)())
    }
}

impl StateType {
    /// The state of type `T`.
    pub const fn of<T: ?Sized + 'static>() -> StateType {
        StateType {
            id: TypeId::of::<T>,
            name: std::any::type_name::<T>,
        }
    }
}

/// The error for a step asking for state of type `type_name` that its runtime was not
/// given.
pub(crate) fn missing(workflow_id: &str, step: &str, type_name: &'static str) -> Error {
    Error::MissingState {
        workflow_id: workflow_id.to_owned(),
        step: step.to_owned(),
        type_name,
    }
}
