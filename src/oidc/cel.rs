//! The CEL expressions of an `AuthenticationConfiguration`, compiled with the `cel` crate and
//! kube-rs's `kube-cel` (the Kubernetes CEL libraries).
//!
//! kube-apiserver type-checks every expression at start-up with cel-go; `cel` has no checker, so
//! an expression is accepted here only when this module can tell that the interpreter will
//! evaluate it as cel-go does: it parses (optional syntax included, as kube-apiserver's
//! environment has enabled `cel.OptionalTypes` since 1.28), it reads no variable other than the
//! one kube-apiserver declares (`claims`, or `user` for `userValidationRules`), and every function
//! it calls is one the interpreter knows and kube-apiserver's environment declares. A library
//! namespace (`sets.equivalent`, `strings.quote`, `ip.isCanonical`, `format.dns1123Label`) is part
//! of a function's name, not a variable. Anything else refuses the configuration, naming the
//! rule, as cel-go's checker refuses it, rather than refusing (or worse, accepting) tokens later
//! on a guess.

use std::{
    collections::BTreeSet,
    sync::{Arc, LazyLock},
};

use kube_cel::{
    KubeCelExt,
    cel::{
        self, Context, ExecutionError, Value,
        common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators},
        extractors::This,
        parser::Parser,
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
    program: Arc<cel::IdedExpr>,
    /// The `claims.<field>` selections, found before `optional_selects_as_indexes` rewrote them.
    claim_selects: Arc<BTreeSet<String>>,
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
    operators::OPT_INDEX,
    operators::OPT_SELECT,
    "@in",
    "@not_strictly_false",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
];

/// Functions the interpreter's Kubernetes libraries have that kube-apiserver 1.37's base CEL
/// environment (k8s.io/apiserver/pkg/cel/environment/base.go, which authentication compiles
/// against as stored expressions) does not declare: cel-go's `ext.Math` and `ext.Encoders`, the
/// JSON patch library of mutating admission policies, and `first`/`last`, which `ext.Lists`
/// version 3 (added in 1.34) does not have. kube-apiserver refuses a configuration that calls one,
/// so the operator does too.
const NOT_IN_KUBE_APISERVER: &[&str] = &["first", "last"];
const NAMESPACES_NOT_IN_KUBE_APISERVER: &[&str] = &["math.", "base64.", "jsonpatch."];

fn declared_by_kube_apiserver(function: &str) -> bool {
    !NOT_IN_KUBE_APISERVER.contains(&function)
        && !NAMESPACES_NOT_IN_KUBE_APISERVER
            .iter()
            .any(|namespace| function.starts_with(namespace))
}

impl Expression {
    /// Parses `source` and checks that the interpreter can evaluate everything it uses; the
    /// error says what it cannot, in a form that fits after the rule's field path.
    pub fn compile(source: &str, variable: Variable) -> Result<Self, String> {
        let mut program = Parser::default()
            .enable_optional_syntax(true)
            .parse(source)
            .map_err(|e| format!("compilation failed: {}", one_line(&e.to_string())))?;
        let mut walk = Walk::default();
        walk.expr(&program, &mut Vec::new());
        optional_selects_as_indexes(&mut program);
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
            if !declared_by_kube_apiserver(function) {
                return Err(format!(
                    "compilation failed: undeclared reference to '{function}' (not in kube-apiserver's CEL environment)"
                ));
            }
            if !is_known_function(&ROOT, function) {
                return Err(format!(
                    "compilation failed: function '{function}' is not supported by this operator's CEL interpreter"
                ));
            }
        }
        Ok(Self {
            program: Arc::new(program),
            claim_selects: Arc::new(walk.claim_selects),
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
        self.claim_selects.contains(field)
    }

    /// Evaluates against `value`, bound to the expression's variable (JSON as kube-apiserver's
    /// unstructured conversion gives it). The error never quotes a claim's value: it ends up in
    /// refusals shown to the token's holder and in logs.
    pub fn evaluate(&self, value: &serde_json::Value) -> Result<Value, String> {
        let mut context = ROOT.new_inner_scope();
        context.add_variable_from_value(self.variable.name(), from_json(value));
        Value::resolve(&self.program, &context).map_err(|error| describe(&error))
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
static ROOT: LazyLock<Context<'static>> = LazyLock::new(|| {
    let mut context = Context::default().with_all();
    context.add_function("includes", includes);
    context
});

/// `<dyn>.includes(<dyn>)`, which kube-apiserver 1.37 adds to its lists library (version 1) and
/// `kube-cel` does not have yet: a list holds the element, or anything else equals it.
fn includes(This(target): This<Value>, element: Value) -> bool {
    match &target {
        Value::List(items) => items.contains(&element),
        other => *other == element,
    }
}

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

/// `x.?f` as `x[?'f']`. The interpreter's `_?._` fails on a map without the key where cel-go
/// gives `optional.none()`; its `_[?_]` does not, and on the maps both variables are (claims, and
/// the user as a map) the two are the same in cel-go.
fn optional_selects_as_indexes(expr: &mut IdedExpr) {
    match &mut expr.expr {
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => {}
        Expr::Select(select) => optional_selects_as_indexes(&mut select.operand),
        Expr::Call(call) => {
            if call.func_name == operators::OPT_SELECT && call.target.is_none() {
                call.func_name = operators::OPT_INDEX.to_owned();
            }
            if let Some(target) = &mut call.target {
                optional_selects_as_indexes(target);
            }
            call.args.iter_mut().for_each(optional_selects_as_indexes);
        }
        Expr::List(list) => list
            .elements
            .iter_mut()
            .for_each(optional_selects_as_indexes),
        Expr::Map(map) => map.entries.iter_mut().for_each(entry_selects_as_indexes),
        Expr::Struct(object) => object.entries.iter_mut().for_each(entry_selects_as_indexes),
        Expr::Comprehension(comprehension) => {
            for part in [
                &mut comprehension.iter_range,
                &mut comprehension.accu_init,
                &mut comprehension.loop_cond,
                &mut comprehension.loop_step,
                &mut comprehension.result,
            ] {
                optional_selects_as_indexes(part);
            }
        }
    }
}

fn entry_selects_as_indexes(entry: &mut cel::common::ast::IdedEntryExpr) {
    match &mut entry.expr {
        EntryExpr::StructField(field) => optional_selects_as_indexes(&mut field.value),
        EntryExpr::MapEntry(pair) => {
            optional_selects_as_indexes(&mut pair.key);
            optional_selects_as_indexes(&mut pair.value);
        }
    }
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
                // `claims.?field` is a call to `_?._`; kube-apiserver's `hasSelectExp` counts it.
                if let (operators::OPT_SELECT, None, [operand, field]) =
                    (call.func_name.as_str(), &call.target, call.args.as_slice())
                    && let (Expr::Ident(name), Expr::Literal(LiteralValue::String(field))) =
                        (&operand.expr, &field.expr)
                    && name == "claims"
                    && !bound.contains(name)
                {
                    self.claim_selects.insert(field.inner().to_owned());
                }
                // The interpreter resolves `ns.f(...)` to the function `ns.f` when it has one,
                // before it would read `ns` as a variable; so does cel-go's checker.
                let qualified = match call.target.as_deref() {
                    Some(IdedExpr {
                        expr: Expr::Ident(namespace),
                        ..
                    }) if !bound.contains(namespace) => {
                        Some(format!("{namespace}.{}", call.func_name))
                            .filter(|name| is_known_function(&ROOT, name))
                    }
                    _ => None,
                };
                match qualified {
                    Some(name) => {
                        self.functions.insert(name);
                    }
                    None => {
                        self.functions.insert(call.func_name.clone());
                        if let Some(target) = &call.target {
                            self.expr(target, bound);
                        }
                    }
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

    /// One expression per library of kube-apiserver's CEL environment, with a namespace or
    /// without: each compiles (a namespace is not a variable) and gives cel-go's answer.
    #[test]
    fn every_library_of_kube_apiservers_environment_evaluates() {
        let claims = json!({
            "sub": "a\"b", "groups": ["b", "a"], "addr": "10.1.2.3", "n": [3, 1, 2],
            "site": "https://x.example/a", "label": "Not_Valid", "version": "1.2.3",
        });
        for source in [
            "sets.equivalent(claims.groups, ['a', 'b'])",
            "sets.contains(claims.groups, ['a']) && sets.intersects(claims.groups, ['b', 'z'])",
            "strings.quote(claims.sub) == '\"a\\\\\"b\"'",
            "claims.groups.join(',') == 'b,a' && claims.sub.charAt(0) == 'a'",
            "ip(claims.addr).family() == 4 && ip.isCanonical(claims.addr)",
            "cidr('10.0.0.0/8').containsIP(ip(claims.addr)) && isCIDR('10.0.0.0/8')",
            "format.dns1123Label().validate(claims.label).hasValue()",
            "!format.dns1123Label().validate('ok-label').hasValue()",
            "quantity('1Gi').isGreaterThan(quantity('1M')) && isQuantity('2k')",
            "semver(claims.version).major() == 1 && isSemver('1.0.0')",
            "[1, 2, 3].isSorted() && claims.n.sum() == 6 && claims.n.min() == 1",
            "claims.sub.find('[a-z]') == 'a' && claims.version.matches('^1')",
            "url(claims.site).getHost() == 'x.example' && isURL(claims.site)",
            "claims.?nick.orValue('none') == 'none' && claims[?'sub'].hasValue()",
            "optional.of(claims.n).hasValue() && !optional.none().hasValue()",
            "claims.n.sort() == [1, 2, 3] && lists.range(2) == [0, 1] && claims.n.reverse()[0] == 2",
            "claims.n.includes(3) && !claims.n.includes(4) && claims.sub.includes(claims.sub)",
        ] {
            assert_eq!(
                eval(source, claims.clone()).map(|value| as_bool(&value)),
                Ok(Some(true)),
                "{source}"
            );
        }
    }

    /// KEP-3331's revocation recipe: a deny-list of credential ids in a user rule, with the
    /// optional index because the extra is absent for a token without `jti`.
    #[test]
    fn the_revocation_recipe_compiles_and_evaluates() {
        let rule = Expression::compile(
            "!user.extra[?'authentication.kubernetes.io/credential-id'].orValue([]).exists(id, id in ['JTI=revoked-1'])",
            Variable::User,
        )
        .unwrap();
        let user = |extra: serde_json::Value| json!({"username": "u", "uid": "", "groups": [], "extra": extra});
        let verdict = |extra| as_bool(&rule.evaluate(&user(extra)).unwrap());
        assert_eq!(verdict(json!({})), Some(true));
        assert_eq!(
            verdict(json!({"authentication.kubernetes.io/credential-id": ["JTI=ok"]})),
            Some(true)
        );
        assert_eq!(
            verdict(json!({"authentication.kubernetes.io/credential-id": ["JTI=revoked-1"]})),
            Some(false)
        );
    }

    /// What kube-apiserver's environment does not declare is refused as cel-go's checker refuses
    /// it, though the interpreter has it.
    #[test]
    fn functions_outside_kube_apiservers_environment_are_refused() {
        for (source, expected) in [
            ("math.abs(-1) == 1", "undeclared reference to 'math.abs'"),
            (
                "base64.encode(b'a') != ''",
                "undeclared reference to 'base64.encode'",
            ),
            (
                "claims.groups.first().hasValue()",
                "undeclared reference to 'first'",
            ),
            ("nosuch.ns(claims.sub)", "undeclared reference to 'nosuch'"),
        ] {
            let error = Expression::compile(source, Variable::Claims).unwrap_err();
            assert!(error.contains(expected), "{source}: {error}");
        }
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
        let optional = Expression::compile(
            "claims.?email_verified.orValue(false) ? claims.sub : ''",
            Variable::Claims,
        )
        .unwrap();
        assert!(optional.selects_claim("email_verified"));
    }
}
