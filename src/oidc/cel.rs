//! The CEL expressions of an `AuthenticationConfiguration`, compiled with the `cel` crate and
//! kube-rs's `kube-cel` (the Kubernetes CEL libraries).
//!
//! kube-apiserver type-checks every expression at start-up with cel-go; `cel` has no checker, so
//! an expression is accepted here only when this module can tell that the interpreter will
//! evaluate it as cel-go does: it parses, it reads no variable other than the one kube-apiserver
//! declares (`claims`, or `user` for `userValidationRules`), and every function it calls is one
//! the interpreter knows. Anything else refuses the configuration, naming the rule, rather than
//! refusing (or worse, accepting) tokens later on a guess.

use std::{
    collections::BTreeSet,
    sync::{Arc, LazyLock},
};

use kube_cel::{
    KubeCelExt,
    cel::{
        self, Context, ExecutionError, Program, Value,
        common::ast::{EntryExpr, Expr, IdedExpr},
    },
};

/// Which variable an expression sees: `claims` for claim rules and mappings, `user` for
/// `userValidationRules`, as kube-apiserver's CEL environments declare them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    Claims,
    User,
}

impl Variable {
    fn name(self) -> &'static str {
        match self {
            Variable::Claims => "claims",
            Variable::User => "user",
        }
    }
}

/// A compiled expression; cheap to share between the configurations of successive reloads.
#[derive(Clone)]
pub struct Expression {
    program: Arc<Program>,
    variable: Variable,
    source: String,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expression({:?})", self.source)
    }
}

/// Operators and macros that the parser turns into calls or comprehensions of its own; the
/// interpreter implements all of them.
const BUILT_INS: &[&str] = &[
    "_&&_",
    "_||_",
    "_?_:_",
    "!_",
    "-_",
    "_==_",
    "_!=_",
    "_<_",
    "_<=_",
    "_>_",
    "_>=_",
    "_+_",
    "_-_",
    "_*_",
    "_/_",
    "_%_",
    "_[_]",
    "@in",
    "@not_strictly_false",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
];

impl Expression {
    /// Parses `source` and checks that the interpreter can evaluate everything it uses; the
    /// error says what it cannot, in a form that fits after the rule's field path.
    pub fn compile(source: &str, variable: Variable) -> Result<Self, String> {
        let program = Program::compile(source)
            .map_err(|e| format!("compilation failed: {}", one_line(&e.to_string())))?;
        let mut walk = Walk::default();
        walk.expr(&program.expression().clone(), &mut Vec::new());
        if let Some(unknown) = walk
            .variables
            .iter()
            .find(|name| name.as_str() != variable.name())
        {
            return Err(format!(
                "compilation failed: undeclared reference to '{unknown}' (only '{}' is declared here)",
                variable.name()
            ));
        }
        for function in &walk.functions {
            if BUILT_INS.contains(&function.as_str()) {
                continue;
            }
            if !is_known_function(&ROOT, function) {
                return Err(format!(
                    "compilation failed: function '{function}' is not supported by this operator's CEL interpreter"
                ));
            }
        }
        Ok(Self {
            program: Arc::new(program),
            variable,
            source: source.to_owned(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression selects `claims.<field>` anywhere, as kube-apiserver's
    /// `hasSelectExp` sees it (also inside `has()`).
    pub fn selects_claim(&self, field: &str) -> bool {
        let mut walk = Walk::default();
        walk.expr(&self.program.expression().clone(), &mut Vec::new());
        walk.claim_selects.contains(field)
    }

    /// Evaluates against `value`, bound to the expression's variable (JSON as kube-apiserver's
    /// unstructured conversion gives it). The error never quotes a claim's value: it ends up in
    /// refusals shown to the token's holder and in logs.
    pub fn evaluate(&self, value: &serde_json::Value) -> Result<Value, String> {
        let mut context = ROOT.new_inner_scope();
        context.add_variable_from_value(self.variable.name(), from_json(value));
        self.program
            .execute(&context)
            .map_err(|error| describe(&error))
    }
}

/// JSON as kube-apiserver's unstructured conversion gives it to cel-go: integers are `int` (a
/// positive one too, where serde would say `uint`), other numbers `double`.
fn from_json(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(flag) => Value::Bool(*flag),
        serde_json::Value::Number(number) => match number.as_i64() {
            Some(int) => Value::Int(int),
            None => Value::Float(number.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(text) => Value::String(Arc::new(text.clone())),
        serde_json::Value::Array(items) => items.iter().map(from_json).collect::<Vec<_>>().into(),
        serde_json::Value::Object(fields) => fields
            .iter()
            .map(|(name, value)| (name.clone(), from_json(value)))
            .collect::<std::collections::HashMap<_, _>>()
            .into(),
    }
}

/// The interpreter's functions with the Kubernetes libraries, as kube-apiserver's environment has
/// them; registered once, each evaluation adds its variable in a scope of its own.
static ROOT: LazyLock<Context<'static>> = LazyLock::new(|| Context::default().with_all());

/// A call without arguments fails with `UndeclaredReference` only when the function is unknown
/// (any known function fails on its arguments instead), so this asks the interpreter itself.
fn is_known_function(context: &Context<'_>, name: &str) -> bool {
    let call = IdedExpr {
        id: 1,
        expr: Expr::Call(cel::common::ast::CallExpr {
            func_name: name.to_owned(),
            target: None,
            args: Vec::new(),
        }),
    };
    !matches!(
        context.resolve(&call),
        Err(ExecutionError::UndeclaredReference(_))
    )
}

/// The free variables, the functions called, and the `claims.<field>` selections of an AST.
#[derive(Default)]
struct Walk {
    variables: BTreeSet<String>,
    functions: BTreeSet<String>,
    claim_selects: BTreeSet<String>,
}

impl Walk {
    fn expr(&mut self, expr: &IdedExpr, bound: &mut Vec<String>) {
        match &expr.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => {
                if !bound.contains(name) {
                    self.variables.insert(name.clone());
                }
            }
            Expr::Select(select) => {
                if matches!(&select.operand.expr, Expr::Ident(name) if name == "claims" && !bound.contains(name))
                {
                    self.claim_selects.insert(select.field.clone());
                }
                self.expr(&select.operand, bound);
            }
            Expr::Call(call) => {
                self.functions.insert(call.func_name.clone());
                if let Some(target) = &call.target {
                    self.expr(target, bound);
                }
                for arg in &call.args {
                    self.expr(arg, bound);
                }
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.expr(element, bound);
                }
            }
            Expr::Map(map) => self.entries(&map.entries, bound),
            Expr::Struct(object) => self.entries(&object.entries, bound),
            Expr::Comprehension(comprehension) => {
                self.expr(&comprehension.iter_range, bound);
                self.expr(&comprehension.accu_init, bound);
                let depth = bound.len();
                bound.push(comprehension.iter_var.clone());
                bound.extend(comprehension.iter_var2.clone());
                bound.push(comprehension.accu_var.clone());
                self.expr(&comprehension.loop_cond, bound);
                self.expr(&comprehension.loop_step, bound);
                self.expr(&comprehension.result, bound);
                bound.truncate(depth);
            }
        }
    }

    fn entries(&mut self, entries: &[cel::common::ast::IdedEntryExpr], bound: &mut Vec<String>) {
        for entry in entries {
            match &entry.expr {
                EntryExpr::StructField(field) => self.expr(&field.value, bound),
                EntryExpr::MapEntry(pair) => {
                    self.expr(&pair.key, bound);
                    self.expr(&pair.value, bound);
                }
            }
        }
    }
}

/// A string result, as `username` and `uid` expressions must give.
pub fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.to_string()),
        _ => None,
    }
}

/// A bool result, as validation rules must give.
pub fn as_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        _ => None,
    }
}

/// kube-apiserver's `convertCELValueToStringList`: a string is one item, a list must hold only
/// strings, `null` is none, and empty strings are dropped.
pub fn as_string_list(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Null => Some(Vec::new()),
        Value::String(text) => Some(
            Some(text.to_string())
                .filter(|text| !text.is_empty())
                .into_iter()
                .collect(),
        ),
        Value::List(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(text) if text.is_empty() => None,
                Value::String(text) => Some(Some(text.to_string())),
                _ => Some(None),
            })
            .collect(),
        _ => None,
    }
}

/// The interpreter's error without the values some variants carry (they come from the token).
fn describe(error: &ExecutionError) -> String {
    match error {
        ExecutionError::NoSuchKey(key) => format!("no such key: {}", one_line(key)),
        ExecutionError::UndeclaredReference(name) => {
            format!("undeclared reference to '{}'", one_line(name))
        }
        // `got` may be a debug print of the value itself.
        ExecutionError::UnexpectedType { want, .. } => {
            format!("unexpected type, want {}", one_line(want))
        }
        ExecutionError::NoSuchOverload => "no such overload".into(),
        ExecutionError::InvalidArgumentCount { expected, actual } => {
            format!("invalid argument count: expected {expected}, got {actual}")
        }
        ExecutionError::MissingArgumentOrTarget => "missing argument or target".into(),
        _ => "an operation is not supported on the values of these claims".into(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval(source: &str, claims: serde_json::Value) -> Result<Value, String> {
        Expression::compile(source, Variable::Claims)?.evaluate(&claims)
    }

    #[test]
    fn mappings_evaluate_with_the_kubernetes_libraries() {
        let claims = json!({"email": "Jane@Example.com", "groups": ["a", ""], "n": 2});
        assert_eq!(
            as_string(&eval("'dex:' + claims.email.lowerAscii()", claims.clone()).unwrap()),
            Some("dex:jane@example.com".into())
        );
        assert_eq!(
            as_string_list(&eval("claims.groups", claims.clone()).unwrap()),
            Some(vec!["a".into()])
        );
        assert_eq!(
            as_bool(&eval("has(claims.email) && claims.n == 2", claims.clone()).unwrap()),
            Some(true)
        );
        assert_eq!(
            as_bool(&eval("claims.groups.all(g, g != 'root')", claims.clone()).unwrap()),
            Some(true)
        );
        assert!(eval("claims.missing", claims.clone()).is_err());
        let refused = eval("claims.email + 1", claims).unwrap_err();
        assert!(!refused.contains("Jane"), "no claim value in {refused:?}");
    }

    #[test]
    fn what_the_interpreter_cannot_evaluate_is_refused_at_compile_time() {
        for (source, expected) in [
            ("claims.sub +", "compilation failed"),
            ("user.username", "undeclared reference to 'user'"),
            (
                "claims.sub.noSuchFunction()",
                "function 'noSuchFunction' is not supported",
            ),
        ] {
            let error = Expression::compile(source, Variable::Claims).unwrap_err();
            assert!(error.contains(expected), "{source}: {error}");
        }
        assert!(Expression::compile("claims.groups.map(g, g + 'x')", Variable::Claims).is_ok());
        assert!(Expression::compile("user.username != ''", Variable::User).is_ok());
    }

    #[test]
    fn claim_selections_are_found_as_kube_apiserver_finds_them() {
        let e = Expression::compile(
            "has(claims.email_verified) ? claims.email : claims.sub",
            Variable::Claims,
        )
        .unwrap();
        assert!(e.selects_claim("email"));
        assert!(e.selects_claim("email_verified"));
        assert!(!e.selects_claim("name"));
    }
}
