param([string] $GuestUser, [string] $GuestPassword, [string] $JoinUser, [string] $JoinPassword)
# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'restore_settings'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Inside the running guest, over PowerShell Direct: the rollback of one apply_settings. The files it
    # replaced come back from its backup on the Var volume (each checked against the sha256 its listing
    # recorded), the files it added are removed, its manifest comes back, its ledger entry goes, then its
    # backup. With no backup and no ledger entry it changes nothing (it never ran, or it was restored).
    $Vm = 'NDXZOOM'
    $RequestJson = '{"backup_rel": "imaging/settings-backups/0a1b2c3d4e5f", "ledger_rel": "imaging/settings.json", "operation": "0a1b2c3d4e5f", "settings_link": "C:\\Instrument\\Settings", "var_link": "C:\\Instrument\\Var"}'
    $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ArgumentList $RequestJson -ScriptBlock {
        param([string] $RequestJson)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $r = ConvertFrom-Json -InputObject $RequestJson
        $utf8 = New-Object System.Text.UTF8Encoding -ArgumentList $false
        function Join-Rel([string] $Root, [string] $Rel) { return (Join-Path -Path $Root -ChildPath $Rel.Replace('/', '\')) }
        $settings = (Get-Item -LiteralPath ([string]$r.settings_link)).FullName
        $var = (Get-Item -LiteralPath ([string]$r.var_link)).FullName
        $ledgerPath = Join-Rel $var ([string]$r.ledger_rel)
        $ledger = $null
        $recorded = $false
        if (Test-Path -LiteralPath $ledgerPath -PathType Leaf) {
            $ledger = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($ledgerPath))
            $recorded = @(@($ledger.applied) | Where-Object { [string]$_.operation -eq [string]$r.operation }).Count -gt 0
        }
        $backup = Join-Rel $var ([string]$r.backup_rel)
        $listing = Join-Path -Path $backup -ChildPath 'listing.json'
        if (-not (Test-Path -LiteralPath $listing -PathType Leaf)) {
            if ($recorded) { throw "the backup of $($r.operation) ($($r.backup_rel)) is missing on Var; cannot restore" }
            return 'unchanged'
        }
        $saved = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($listing))
        foreach ($f in @($saved.files)) {
            $target = Join-Rel $settings ([string]$f.path)
            if ($null -eq $f.previous_sha256) {
                if (Test-Path -LiteralPath $target -PathType Leaf) { Remove-Item -LiteralPath $target -Force }
                continue
            }
            $copy = Join-Rel (Join-Path -Path $backup -ChildPath 'files') ([string]$f.path)
            if ((Get-FileHash -LiteralPath $copy -Algorithm SHA256).Hash.ToLowerInvariant() -ne [string]$f.previous_sha256) {
                throw "the backup of $($f.path) does not match its recorded sha256"
            }
            $folder = Split-Path -Path $target -Parent
            if (-not (Test-Path -LiteralPath $folder -PathType Container)) { New-Item -ItemType Directory -Path $folder -Force | Out-Null }
            Copy-Item -LiteralPath $copy -Destination ($target + '.imaging-partial') -Force
            Move-Item -LiteralPath ($target + '.imaging-partial') -Destination $target -Force
        }
        if ($recorded) {
            $ledger.applied = @(@($ledger.applied) | Where-Object { [string]$_.operation -ne [string]$r.operation })
            [System.IO.File]::WriteAllBytes($ledgerPath + '.imaging-partial', $utf8.GetBytes((ConvertTo-Json -Depth 8 -InputObject $ledger)))
            Move-Item -LiteralPath ($ledgerPath + '.imaging-partial') -Destination $ledgerPath -Force
        }
        Remove-Item -LiteralPath $backup -Recurse -Force
        $staged = Join-Path -Path $env:ProgramData -ChildPath ('imaging\settings-staged\' + [string]$r.operation)
        if (Test-Path -LiteralPath $staged) { Remove-Item -LiteralPath $staged -Recurse -Force }
        'restored'
    }
    $Result['changed'] = ([string]$answer -eq 'restored')
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
