//! Azure Resource Manager stand-in (to be written).
