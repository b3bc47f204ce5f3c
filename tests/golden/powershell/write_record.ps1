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

$ImagingAction = 'write_record'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Inside the guest, over PowerShell Direct: writes the instrument record onto the Var volume, replacing
    # the old one atomically and only when its content differs. The record it replaces is kept beside it
    # (record.previous.json: {operation, previous}; previous is null when there was none) for
    # restore_record, the undo of this step, which restores only what this operation replaced.
    $Vm = 'NDXZOOM'
    $Record = [ordered]@{'instrument' = 'ZOOM'; 'vm' = 'NDXZOOM'; 'host' = 'HVHOST01'; 'release' = '2026C3.0'; 'os_generation' = 7; 'disks' = [ordered]@{'os' = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-os-7.vhdx'}; 'hotfixes' = @(); 'operation' = [ordered]@{'id' = 'reimage-20261121-1930-ab12'; 'by' = 'jbloggs'; 'finished_utc' = '2026-11-21T19:52:00Z'}}
    $Operation = '3f2a9c1d7e6b'
    $RecordPath = 'C:\Instrument\Var\imaging\record.json'
    $text = ConvertTo-Json -InputObject $Record -Depth 8
    $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ArgumentList $RecordPath, $text, $Operation -ScriptBlock {
        param([string] $Path, [string] $Text, [string] $Operation)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $folder = Split-Path -Path $Path -Parent
        if (-not (Test-Path -LiteralPath $folder -PathType Container)) { New-Item -ItemType Directory -Path $folder -Force | Out-Null }
        $old = $null
        if (Test-Path -LiteralPath $Path -PathType Leaf) { $old = [System.IO.File]::ReadAllText($Path) }
        if ($old -ceq $Text) { 'unchanged' }
        else {
            $utf8 = New-Object System.Text.UTF8Encoding -ArgumentList $false
            $previous = Join-Path -Path $folder -ChildPath 'record.previous.json'
            $mine = $false
            if (Test-Path -LiteralPath $previous -PathType Leaf) {
                $kept = $null
                try { $kept = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($previous)) } catch { $kept = $null }
                if ($null -ne $kept -and ($kept.PSObject.Properties.Name -contains 'operation')) {
                    $mine = ([string]$kept.operation -ceq $Operation)
                }
            }
            # A retry of this operation keeps the copy it made first.
            if (-not $mine) {
                $keep = ConvertTo-Json -Compress -InputObject ([ordered]@{ operation = $Operation; previous = $old })
                [System.IO.File]::WriteAllText($previous + '.partial', $keep, $utf8)
                Move-Item -LiteralPath ($previous + '.partial') -Destination $previous -Force
            }
            $partial = $Path + '.partial'
            [System.IO.File]::WriteAllText($partial, $Text, $utf8)
            Move-Item -LiteralPath $partial -Destination $Path -Force
            'written'
        }
    }
    $Result['changed'] = ([string]$answer -eq 'written')
    $Result['record_path'] = $RecordPath
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
